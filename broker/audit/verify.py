"""`ndxp audit verify` and `ndxp audit export`: recompute the exchange log and check every checkpoint.

The check streams the leaves once (O(log n) memory, :class:`~broker.audit.merkle.Frontier`) and stops at
the first fault, which it names: a leaf missing, repeated or out of place; a checkpoint whose root the
leaves do not give, that is not signed by the log's key of its time, that lies beyond the log, or
that rolls the log back (a smaller tree written after a larger one). The key history comes from the
log's own key leaves; keys given with ``--key`` (or in a bundle's ``keys.txt``) are the trust anchors.

A bundle (``export --day D``) holds the leaves of the checkpoints written that day, the checkpoints,
the frontier of the tree before them with the checkpoint it matches, consistency proofs between
successive checkpoints, and the verifier keys: ``verify --bundle DIR`` checks it with no Kafka, and any
C2SP/RFC 9162 verifier can check its checkpoints and proofs (``deploy/checks/tlogcheck`` does).
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition

from broker.audit.index import KEY_LEAF, decode_chunk, leaf_fields
from broker.audit.merkle import Frontier, MemoryNodes, ProofError, Tree, leaf_hash, verify_consistency
from broker.audit.note import Checkpoint, NoteError, Verifier
from broker.kafka import Record, Topics, batches_to_end, make_consumer
from broker.settings import Settings


class Tampered(Exception):
    """The first fault found: what and where."""


@dataclass
class Signed:
    """A checkpoint as found (topic order), before it is checked."""

    where: str
    note: str
    size: int
    written_ms: int = 0


def parse_checkpoints(found: Iterable[tuple[str, bytes | None, str, int]]) -> list[Signed]:
    """Checkpoints in the order written: (where, key, note, timestamp); a checkpoint that does not parse,
    whose key is not its size, or that is smaller than one written before it is a fault."""
    out: list[Signed] = []
    largest = -1
    for where, key, note, ts in found:
        try:
            text = note.rpartition("\n\n")[0] + "\n"
            size = Checkpoint.parse_text(text).size
        except NoteError as exc:
            raise Tampered(f"{where}: not a checkpoint ({exc})") from exc
        if key is not None and key != b"%016d" % size:
            raise Tampered(f"{where}: keyed {key.decode(errors='replace')!r} but covers {size} leaves")
        if size == largest:
            raise Tampered(f"checkpoint of size {size} ({where}) is a second one for that size")
        if size < largest:
            raise Tampered(f"checkpoint of size {size} ({where}) rolls the log back: written after {largest}")
        largest = size
        out.append(Signed(where, note, size, ts))
    return out


@dataclass
class Check:
    """Streams leaves in order and checks each checkpoint as its size is reached."""

    origin: str
    checkpoints: list[Signed]
    anchors: set[str] = field(default_factory=set)
    frontier: Frontier = field(default_factory=Frontier)
    key: Verifier | None = None
    keys_seen: list[str] = field(default_factory=list)
    checked: int = 0
    _next: int = 0

    def __post_init__(self) -> None:
        while self._next < len(self.checkpoints) and self.checkpoints[self._next].size <= self.frontier.size:
            self._next += 1  # before the start (a bundle's): checked by whoever made the frontier

    def leaf(self, where: str, claimed: int | None, leaf: bytes) -> None:
        n = self.frontier.size
        if claimed is not None and claimed != n:
            what = "is missing" if claimed > n else "is repeated"
            raise Tampered(f"leaf {n if claimed > n else claimed} {what} ({where} holds leaf {claimed})")
        f = leaf_fields(leaf)
        if f.kind is None and f.exchange_id is None:
            raise Tampered(f"leaf {n} ({where}) is not a transaction record")
        if f.kind == KEY_LEAF and f.vkey:
            if self.anchors and f.vkey not in self.anchors:
                raise Tampered(f"leaf {n} records signing key {f.vkey.split('+')[1]}, not a trusted key")
            try:
                self.key = Verifier.parse(f.vkey)
            except NoteError as exc:
                raise Tampered(f"leaf {n} records a key that does not parse: {exc}") from exc
            self.keys_seen.append(f.vkey)
        self.frontier.append(leaf_hash(leaf))
        while self._next < len(self.checkpoints) and self.checkpoints[self._next].size == self.frontier.size:
            self.checkpoint(self.checkpoints[self._next])
            self._next += 1

    def checkpoint(self, cp: Signed) -> None:
        if self.key is None:
            raise Tampered(f"checkpoint of size {cp.size} ({cp.where}): the log recorded no key before it")
        try:
            found = Checkpoint.open(cp.note, self.key, self.origin)
        except NoteError as exc:
            raise Tampered(f"checkpoint of size {cp.size} ({cp.where}) is forged: {exc}") from exc
        if found.root != self.frontier.root():
            last = self.checkpoints[self._next - 1].size if self._next else 0
            raise Tampered(
                f"checkpoint of size {cp.size} ({cp.where}) does not match the leaves: one of leaves "
                f"{last}..{cp.size - 1} was changed"
            )
        self.checked += 1

    def end(self) -> None:
        if self._next < len(self.checkpoints):
            cp = self.checkpoints[self._next]
            raise Tampered(
                f"checkpoint of size {cp.size} ({cp.where}) lies beyond the log's {self.frontier.size} leaves"
            )


# -- from Kafka -------------------------------------------------------------------------------------


def _chunk(where: str, msg: Record) -> list[bytes]:
    try:
        return decode_chunk(msg.value or b"")
    except ValueError as exc:
        raise Tampered(f"{where} is not a message of leaves: {exc}") from exc


async def _read(settings: Settings, topic: str, each: Callable[[Record], None]) -> None:
    consumer = make_consumer(settings, group_id=None, isolation_level="read_committed")
    await consumer.start()
    try:
        async for batch in batches_to_end(consumer, TopicPartition(topic, 0), max_records=5000):
            for msg in batch:
                each(msg)
    finally:
        await consumer.stop()


async def read_checkpoints(settings: Settings) -> list[Signed]:
    found: list[tuple[str, bytes | None, str, int]] = []
    topic = Topics(settings).audit_checkpoints().name

    def take(msg: Record) -> None:
        if msg.value is not None:
            found.append(
                (f"{topic}@{msg.offset}", msg.key, msg.value.decode(errors="replace"), msg.timestamp)
            )

    await _read(settings, topic, take)
    return parse_checkpoints(found)


async def verify_kafka(
    settings: Settings, anchors: set[str], progress: Callable[[str], Any] = print
) -> Check:
    """Check the log in Kafka; :class:`Tampered` at the first fault."""
    check = Check(settings.audit_origin, await read_checkpoints(settings), anchors)
    topic = Topics(settings).audit_leaves().name
    started, shown = time.monotonic(), [time.monotonic()]

    def take(msg: Record) -> None:
        where = f"{topic}@{msg.offset}"
        claimed = int(msg.key) if msg.key is not None and msg.key.isdigit() else None
        for j, leaf in enumerate(_chunk(where, msg)):
            check.leaf(where, None if claimed is None else claimed + j, leaf)
        if time.monotonic() - shown[0] >= 2:
            shown[0] = time.monotonic()
            progress(f"  … {check.frontier.size} leaves, {check.checked} checkpoints checked")

    await _read(settings, topic, take)
    check.end()
    progress(f"  {check.frontier.size} leaves read in {time.monotonic() - started:.1f}s")
    return check


# -- bundles ----------------------------------------------------------------------------------------


def _day_bounds_ms(day: str, utc_offset_hours: int) -> tuple[int, int]:
    tz = dt.timezone(dt.timedelta(hours=utc_offset_hours))
    start = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), tz)
    return int(start.timestamp() * 1000), int((start + dt.timedelta(days=1)).timestamp() * 1000)


async def export_day(settings: Settings, day: str, out: Path, progress: Callable[[str], Any] = print) -> int:
    """Write the bundle of ``day``'s checkpoints (in the counting time zone); the leaves it holds."""
    lo_ms, hi_ms = _day_bounds_ms(day, settings.stats_utc_offset_hours)
    cps = await read_checkpoints(settings)
    before = [c for c in cps if c.written_ms < lo_ms]
    inside = [c for c in cps if lo_ms <= c.written_ms < hi_ms]
    if not inside:
        raise Tampered(f"no checkpoint was written on {day}: nothing to export")
    start_size = before[-1].size if before else 0
    end_size = inside[-1].size
    frontier = Frontier()
    nodes = MemoryNodes()
    tree: Tree | None = None
    leaves: list[bytes] = []
    keys: list[str] = []
    start_key: list[str] = []
    topic = Topics(settings).audit_leaves().name

    def take(msg: Record) -> None:
        for leaf in _chunk(f"{topic}@{msg.offset}", msg):
            take_leaf(leaf)

    def take_leaf(leaf: bytes) -> None:
        nonlocal tree
        n = frontier.size if tree is None else tree.size
        if n >= end_size:
            return
        f = leaf_fields(leaf)
        if f.kind == KEY_LEAF and f.vkey:
            keys.append(f.vkey)
            if n < start_size:
                start_key[:] = [f.vkey]
        if tree is None:
            frontier.append(leaf_hash(leaf))
            if frontier.size == start_size:
                nodes.put_many(frontier.indexed())
                tree = Tree(nodes, start_size)
        else:
            tree.append([leaf_hash(leaf)])
            leaves.append(leaf)

    if start_size == 0:
        tree = Tree(nodes, 0)
    await _read(settings, topic, take)
    if tree is None or tree.size < end_size:
        raise Tampered(f"the leaves topic ends before leaf {end_size}: run ndxp audit verify")
    start_doc = {
        "origin": settings.audit_origin,
        "day": day,
        "size": start_size,
        "frontier": [[lv, h.hex()] for lv, h in frontier.nodes] if start_size else [],
        "checkpoint": before[-1].note if before else None,
        "key": start_key[0] if start_key else None,
    }
    write_bundle(out, tree, start_doc, leaves, inside, keys)
    progress(f"{out}: leaves {start_size}..{end_size - 1}, {len(inside)} checkpoints, {len(set(keys))} keys")
    return len(leaves)


def write_bundle(
    out: Path,
    tree: Tree,
    start_doc: dict[str, Any],
    leaves: list[bytes],
    inside: list[Signed],
    keys: list[str],
) -> None:
    start_size = int(start_doc["size"])
    out.mkdir(parents=True, exist_ok=True)
    with (out / "leaves.jsonl").open("wb") as f:
        for i, leaf in enumerate(leaves, start_size):
            f.write(orjson.dumps({"index": i, "leaf": base64.b64encode(leaf).decode()}) + b"\n")
    with (out / "checkpoints.jsonl").open("wb") as f:
        for c in inside:
            f.write(orjson.dumps({"size": c.size, "note": c.note}) + b"\n")
    with (out / "consistency.jsonl").open("wb") as f:
        prev = start_size
        for c in inside:
            if prev:
                proof = [h.hex() for h in tree.consistency(prev, c.size)]
                f.write(orjson.dumps({"from": prev, "to": c.size, "proof": proof}) + b"\n")
            prev = c.size
    (out / "start.json").write_bytes(orjson.dumps(start_doc, option=orjson.OPT_INDENT_2))
    (out / "keys.txt").write_text("".join(k + "\n" for k in dict.fromkeys(keys)))


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            try:
                yield n, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise Tampered(f"{path.name} line {n} is not JSON") from exc


def verify_bundle(bundle: Path, anchors: set[str] | None = None) -> Check:
    """Check an exported bundle offline; :class:`Tampered` at the first fault."""
    start = orjson.loads((bundle / "start.json").read_bytes())
    keys = {k for k in (bundle / "keys.txt").read_text().split() if k}
    trusted = anchors or keys
    found = [(f"checkpoints.jsonl line {n}", None, str(doc["note"]), 0)
             for n, doc in _jsonl(bundle / "checkpoints.jsonl")]  # fmt: skip
    checkpoints = parse_checkpoints(found)
    frontier = Frontier([(int(lv), bytes.fromhex(h)) for lv, h in start["frontier"]])
    if frontier.size != start["size"]:
        raise Tampered(f"start.json: its frontier covers {frontier.size} leaves, not {start['size']}")
    key = None
    if start["size"]:
        if not start.get("checkpoint") or not start.get("key"):
            raise Tampered(
                "start.json: a bundle that starts mid-log needs the checkpoint and key it starts at"
            )
        if start["key"] not in trusted:
            raise Tampered("start.json: its key is not a trusted key")
        key = Verifier.parse(start["key"])
        try:
            cp = Checkpoint.open(start["checkpoint"], key, start["origin"])
        except NoteError as exc:
            raise Tampered(f"start.json: its checkpoint is forged: {exc}") from exc
        if cp.size != frontier.size or cp.root != frontier.root():
            raise Tampered("start.json: its frontier does not match its checkpoint")
    check = Check(start["origin"], checkpoints, trusted, frontier, key)
    for n, doc in _jsonl(bundle / "leaves.jsonl"):
        try:
            leaf = base64.b64decode(doc["leaf"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise Tampered(f"leaves.jsonl line {n} holds no leaf") from exc
        check.leaf(f"leaves.jsonl line {n}", doc.get("index"), leaf)
    check.end()
    roots = {c.size: Checkpoint.parse_text(c.note.rpartition("\n\n")[0] + "\n").root for c in checkpoints}
    if start["size"]:
        roots[start["size"]] = Checkpoint.parse_text(start["checkpoint"].rpartition("\n\n")[0] + "\n").root
    for n, doc in _jsonl(bundle / "consistency.jsonl"):
        old, new = int(doc["from"]), int(doc["to"])
        try:
            verify_consistency(old, new, roots[old], roots[new], [bytes.fromhex(h) for h in doc["proof"]])
        except (KeyError, ValueError, ProofError) as exc:
            raise Tampered(f"consistency.jsonl line {n}: {old} → {new} does not hold ({exc})") from exc
    return check
