"""Limits shared by the worker processes of one gateway instance: token buckets and in-flight counts
in one memory-mapped file.

The supervisor (:func:`broker.gateway.workers.run_gateway`) makes the file; every worker maps it.
A client's bucket is one slot, found by a keyed hash of its agency id (or, for failed logins, of the
address): the key is random per file, so no caller can aim two names at one slot. Every read and
update of a slot happens under an ``flock`` of the file (a system call each way, a microsecond or
two): exact across workers, however a client's connections land on them.

In-flight counts are kept per worker (a column each): a worker that is killed cannot leak its
exchanges into a client's count, since its restart (same index) zeroes its column first.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import mmap
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

MAX_WORKERS = 64
AGENCY_SLOTS = 8192
ADDRESS_SLOTS = 65536
PROBES = 32
"""Slots looked at from a name's home slot: a name that finds no room there has no shared slot
(the caller falls back to its own bucket; for addresses, the stalest slot in reach is reused)."""


class _Bucket(ctypes.Structure):
    _fields_ = (("key", ctypes.c_uint64), ("tokens", ctypes.c_double), ("last", ctypes.c_double))


class _Agency(ctypes.Structure):
    _fields_ = (
        ("key", ctypes.c_uint64),
        ("tokens", ctypes.c_double),
        ("last", ctypes.c_double),
        ("in_flight", ctypes.c_int32 * MAX_WORKERS),
    )


class _Header(ctypes.Structure):
    _fields_ = (("salt", ctypes.c_char * 16),)


_SIZE = (
    ctypes.sizeof(_Header) + AGENCY_SLOTS * ctypes.sizeof(_Agency) + ADDRESS_SLOTS * ctypes.sizeof(_Bucket)
)


def create(path: Path) -> Path:
    """Make the file (zeroed, with a fresh hashing key) for the workers to map."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, _SIZE)
        os.pwrite(fd, secrets.token_bytes(16), 0)
    finally:
        os.close(fd)
    return path


def _refill(slot: _Bucket | _Agency, rate: float, burst: float, now: float) -> None:
    if slot.last == 0.0:  # a new slot starts full
        slot.tokens = burst
    else:
        slot.tokens = min(burst, slot.tokens + max(0.0, now - slot.last) * rate)
    slot.last = now


class SharedLimits:
    """One worker's view of the instance's shared buckets."""

    def __init__(self, path: Path, worker: int) -> None:
        if not 0 <= worker < MAX_WORKERS:
            raise ValueError(f"worker {worker}: at most {MAX_WORKERS} workers share limits")
        self.worker = worker
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, _SIZE)
        header = _Header.from_buffer(self._map, 0)
        self._salt = bytes(header.salt)
        del header
        offset = ctypes.sizeof(_Header)
        self._agencies = (_Agency * AGENCY_SLOTS).from_buffer(self._map, offset)
        offset += AGENCY_SLOTS * ctypes.sizeof(_Agency)
        self._addresses = (_Bucket * ADDRESS_SLOTS).from_buffer(self._map, offset)
        with self._locked():  # what an earlier process of this index held is not in flight any more
            for slot in self._agencies:
                slot.in_flight[worker] = 0

    def close(self) -> None:
        del self._agencies, self._addresses
        self._map.close()
        os.close(self._fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _key(self, name: str) -> int:
        key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, key=self._salt).digest(), "little")
        return key or 1  # 0 marks a free slot

    def _agency(self, name: str) -> _Agency | None:
        key = self._key(name)
        home = key % AGENCY_SLOTS
        for i in range(PROBES):
            slot = self._agencies[(home + i) % AGENCY_SLOTS]
            if slot.key == key:
                return slot
            if slot.key == 0:
                slot.key = key
                return slot
        return None

    def take(self, agency: str, rate: float, burst: float) -> float | None:
        """Take one of ``agency``'s tokens: 0.0 if granted, else seconds until one is; None if the
        table has no room for it (the caller keeps its own bucket)."""
        now = time.monotonic()
        with self._locked():
            slot = self._agency(agency)
            if slot is None:
                return None
            _refill(slot, rate, burst, now)
            tokens = float(slot.tokens)
            if tokens >= 1.0:
                slot.tokens = tokens - 1.0
                return 0.0
            return (1.0 - tokens) / rate

    def enter(self, agency: str, cap: int | None) -> bool | None:
        """Count one exchange of ``agency`` in flight unless it already has ``cap`` across the
        workers (False); None if the table has no room for it."""
        with self._locked():
            slot = self._agency(agency)
            if slot is None:
                return None
            if cap is not None and sum(slot.in_flight) >= cap:
                return False
            slot.in_flight[self.worker] += 1
            return True

    def leave(self, agency: str) -> None:
        with self._locked():
            slot = self._agency(agency)
            if slot is not None and slot.in_flight[self.worker] > 0:
                slot.in_flight[self.worker] -= 1

    def in_flight(self, agency: str) -> int:
        with self._locked():
            slot = self._agency(agency)
            return 0 if slot is None else sum(slot.in_flight)

    def reset(self, agency: str) -> None:
        """``agency``'s bucket starts full again (its rate changed)."""
        with self._locked():
            slot = self._agency(agency)
            if slot is not None:
                slot.last = 0.0

    def _address(self, address: str, *, make: bool) -> _Bucket | None:
        key = self._key("@" + address)
        home = key % ADDRESS_SLOTS
        stalest: _Bucket | None = None
        for i in range(PROBES):
            slot = self._addresses[(home + i) % ADDRESS_SLOTS]
            if slot.key == key:
                return slot
            if slot.key == 0:
                stalest = slot
                break
            if stalest is None or slot.last < stalest.last:
                stalest = slot
        if not make or stalest is None:
            return None
        # Bounded memory: the stalest address in reach is forgotten (its allowance long refilled).
        stalest.key, stalest.last = key, 0.0
        return stalest

    def address_wait(self, address: str, rate: float, burst: float) -> float:
        """Seconds until ``address`` may try to authenticate again (0.0: now)."""
        now = time.monotonic()
        with self._locked():
            slot = self._address(address, make=False)
            if slot is None:
                return 0.0
            _refill(slot, rate, burst, now)
            return 0.0 if slot.tokens >= 1.0 else (1.0 - slot.tokens) / rate

    def address_failed(self, address: str, rate: float, burst: float) -> None:
        """Count one failed authentication of ``address``."""
        now = time.monotonic()
        with self._locked():
            slot = self._address(address, make=True)
            if slot is not None:
                _refill(slot, rate, burst, now)
                slot.tokens = max(0.0, slot.tokens - 1.0)
