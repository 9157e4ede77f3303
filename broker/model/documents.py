"""Stored exchanges: the documents of async and idempotent exchanges in ``ndxp.exchanges``.

All messages of one exchange go to one partition of the topic, keyed by its
exchange id, so that every reader sees them in order::

    pending   (gateway)  accepted: who asked what, its deadline, its claim
    reply     (adapter)  the provider's reply: an ordinary reply message
    final     (keeper)   the outcome: status, HTTP status, result or problem,
                         and the callback's state (written again per attempt)

The gateway picks the partition: from the caller's ``Idempotency-Key`` (hashed
with the caller's agency id, so that no caller reaches another's key) when
one is given, else from the exchange id. All claims on one key are thus
ordered in one partition: the first pending document of a key wins for
``IDEMPOTENCY_WINDOW_MS``, and later ones are claims that lost, which
nobody processes. Gateways and the keeper apply the same rule to the same
log, so they agree without talking to each other.

The topic is compacted and deleted by time (``exchanges_retention_hours``):
the latest document of an exchange is what a reader sees.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from broker.model.records import Mode

H_DOC = "ndxp-doc"
"""Header naming a document's kind (``pending`` or ``final``); adapter replies have none."""
IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000
"""A key is bound to its first exchange for 24 h (the public contract)."""
EXCHANGES_PARTITIONS = 8
"""Partitions of the exchanges topic: every reader maps an exchange to its partition with this."""
GRACE_MS = 1000
"""A reply that reached Kafka just before the deadline still wins over expiry (the keeper waits
this long past a deadline; the gateway's ``Prefer: wait`` too)."""
MAX_ASYNC_TTL_MS = 48 * 3600 * 1000
"""The longest an async exchange may wait for its provider (``Prefer: wait`` aside)."""


class Status(enum.StrEnum):
    """Where a stored exchange stands (the public ``status`` of ``GET /v1/exchanges/{id}``)."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


class CallbackState(enum.StrEnum):
    """Where an async exchange's callback stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    """Every attempt failed: dead-lettered."""


def partition_for(token: str, partitions: int) -> int:
    """The partition of all documents of an exchange (token: its idempotency hash or its id)."""
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=4).digest()) % partitions


def idempotency_hash(client: str, key: str) -> str:
    """The stored form of a caller's ``Idempotency-Key``: bound to the authenticated caller."""
    return hashlib.sha256(f"{client}\0{key}".encode()).hexdigest()


def fingerprint(provider: str, service: str, body: bytes) -> str:
    """What makes two requests "the same" for an idempotency key: service and body bytes."""
    return hashlib.sha256(f"{provider}/{service}\0".encode() + body).hexdigest()


def _iso(t_ms: float | None) -> str | None:
    if t_ms is None:
        return None
    return dt.datetime.fromtimestamp(t_ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Stored:
    """What every document of a stored exchange says: which exchange, whose, of what, since when."""

    exchange_id: str
    client: str
    provider: str
    service: str
    mode: Mode
    t_in: float
    idempotency: str | None = None
    """The claim: SHA-256 of the caller's agency id and Idempotency-Key."""
    fingerprint: str | None = None
    """Service and body of the claiming request (a reused key with another one is refused)."""

    def _public(self, status: Status, http_status: int | None) -> dict[str, Any]:
        return {
            "exchange_id": self.exchange_id,
            "status": status,
            "http_status": http_status,
            "mode": self.mode,
            "provider": self.provider,
            "service": self.service,
            "accepted_at": _iso(self.t_in),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Pending(_Stored):
    """An accepted stored exchange (written by the gateway before the request)."""

    deadline_ms: int
    request_id: str | None = None
    user_id: str | None = None
    purpose: str | None = None
    request_bytes: int = 0
    gateway: str = ""
    major: int | None = None
    """The service version (major) the request was accepted for; None: the default (older documents)."""
    request_sha256: str | None = None
    """For the exchange log: the request body's SHA-256 (the body itself is never stored here)."""
    subject: str | None = None
    """For the data tracker: the keyed hash of the person the request is about."""

    def encode(self) -> bytes:
        return orjson.dumps({"kind": "pending", **_fields(self)})

    def view(self) -> dict[str, Any]:
        """The public status document while it waits."""
        return {**self._public(Status.PENDING, None), "expires_at": _iso(self.deadline_ms)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Final(_Stored):
    """The outcome of a stored exchange (written by the keeper; again for each callback attempt)."""

    t_out: float
    status: Status
    http_status: int
    outcome: str
    """For counting: ``ok``, ``business_error`` or an error code."""
    body: Any
    """The result (``done``) or the problem document (otherwise), as JSON."""
    callback: dict[str, Any] | None = field(default=None)
    """``{"state": "pending"|"delivered"|"failed", "attempts": n, "error": …, "next_at": ms}``, or
    None when the caller has no callback (or the exchange is synchronous)."""

    def encode(self) -> bytes:
        return orjson.dumps({"kind": "final", **_fields(self)})

    @property
    def callback_due(self) -> bool:
        return self.callback is not None and self.callback.get("state") == CallbackState.PENDING

    def view(self) -> dict[str, Any]:
        """The public status document (also the callback's body)."""
        doc = {
            **self._public(self.status, self.http_status),
            "result" if self.status == Status.DONE else "problem": self.body,
            "finished_at": _iso(self.t_out),
        }
        if self.callback is not None:
            doc["callback"] = {k: v for k, v in self.callback.items() if k != "next_at"}
        return doc


Doc = Pending | Final


def _fields(doc: _Stored) -> dict[str, Any]:
    return {name: getattr(doc, name) for name in doc.__dataclass_fields__}


_KINDS: dict[str, type[Pending] | type[Final]] = {"pending": Pending, "final": Final}


def decode(raw: bytes) -> Doc:
    """A pending or final document, every field type-checked (msgspec); ``ValueError`` when it is neither."""
    try:
        data = msgspec.json.decode(raw)
        kind = _KINDS[data.pop("kind")]
        doc: Doc = msgspec.convert(data, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not an exchange document: {exc!r}") from exc
    return doc


def doc_kind(headers: Any) -> str | None:
    """``pending``/``final`` for a document, None for an adapter's reply."""
    for k, v in headers or ():
        if k == H_DOC and isinstance(v, bytes):
            return v.decode(errors="replace")
    return None


@dataclass(frozen=True, slots=True)
class Claim:
    """The exchange holding an idempotency key: the first claim on it in the log."""

    exchange_id: str
    t_in: float
    fingerprint: str | None
    """Service and body of the claiming request (a reused key with another one is refused)."""


class Claims:
    """The first claim on each idempotency key, as read from the log (same rule everywhere)."""

    __slots__ = ("_first",)

    def __init__(self) -> None:
        self._first: dict[str, Claim] = {}

    def apply(self, doc: Pending) -> bool:
        """Record a pending document; False when it is a claim that lost (another holds the key)."""
        if doc.idempotency is None:
            return True
        held = self._first.get(doc.idempotency)
        if (
            held is not None
            and held.exchange_id != doc.exchange_id
            and doc.t_in - held.t_in < IDEMPOTENCY_WINDOW_MS
        ):
            return False
        if held is None or held.exchange_id != doc.exchange_id:
            self._first[doc.idempotency] = Claim(doc.exchange_id, doc.t_in, doc.fingerprint)
        return True

    def holder(self, idempotency: str, now_ms: float) -> Claim | None:
        """The claim holding the key, if one within the window does."""
        held = self._first.get(idempotency)
        if held is None or now_ms - held.t_in >= IDEMPOTENCY_WINDOW_MS:
            return None
        return held

    def forget_before(self, t_ms: float) -> None:
        self._first = {k: v for k, v in self._first.items() if v.t_in >= t_ms}

    def __len__(self) -> int:
        return len(self._first)
