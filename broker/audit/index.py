"""The audit part's SQLite index of the exchange log: a cache of Kafka, rebuilt from it when missing.

Tables: the tree's complete nodes (``nodes``), each leaf with the exchange it records (``leaves``), the
data tracker's accesses by subject (``accesses``), the signed checkpoints (``checkpoints``), and where in
the leaves topic the index has read to (``meta``). WAL mode: the writer appends in its own SQLite
transaction, committed only once Kafka has committed the same leaves; readers (the API) use their own
connection and see committed leaves only, so no proof is ever offered for a leaf Kafka might still drop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from broker.audit.merkle import Tree, leaf_hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (level INTEGER, idx INTEGER, hash BLOB,
                                  PRIMARY KEY (level, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leaves (idx INTEGER PRIMARY KEY, exchange_id TEXT, client TEXT, provider TEXT,
                                   leaf BLOB);
CREATE INDEX IF NOT EXISTS leaves_by_exchange ON leaves (exchange_id);
CREATE TABLE IF NOT EXISTS accesses (subject TEXT, idx INTEGER, PRIMARY KEY (subject, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note TEXT);
"""

KEY_LEAF = "audit-key"
"""The ``kind`` of a leaf that records a new signing key (the key history is in the log itself)."""


CHUNK_BYTES = 512 * 1024
"""Leaves travel in messages of up to this many bytes (one Kafka record per chunk, not per leaf)."""


def pack(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Split leaves into chunks of at most CHUNK_BYTES (a leaf bigger than that is a chunk alone)."""
    chunks: list[list[bytes]] = []
    size = CHUNK_BYTES
    for leaf in leaves:
        if size + len(leaf) + 4 > CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(leaf)
        size += len(leaf) + 4
    return chunks


def encode_chunk(leaves: Sequence[bytes]) -> bytes:
    """One leaves-topic message: each leaf as a 4-byte big-endian length and its bytes."""
    return b"".join(len(leaf).to_bytes(4, "big") + leaf for leaf in leaves)


def decode_chunk(value: bytes) -> list[bytes]:
    """The leaves of one message; ValueError if it is not one."""
    out, i = [], 0
    while i < len(value):
        if i + 4 > len(value):
            raise ValueError("a leaves message ends inside a length")
        n = int.from_bytes(value[i : i + 4], "big")
        if i + 4 + n > len(value):
            raise ValueError("a leaves message ends inside a leaf")
        out.append(value[i + 4 : i + 4 + n])
        i += 4 + n
    return out


class _Fields(msgspec.Struct):
    """What the index reads of a leaf (a transaction record or a key leaf)."""

    exchange_id: str | None = None
    client: str | None = None
    provider: str | None = None
    subject: str | None = None
    kind: str | None = None
    vkey: str | None = None


_FIELDS = msgspec.json.Decoder(_Fields)


def leaf_fields(leaf: bytes) -> _Fields:
    try:
        return _FIELDS.decode(leaf)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _Fields()


class SqliteNodes:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def get(self, level: int, index: int) -> bytes:
        row = self.db.execute("SELECT hash FROM nodes WHERE level=? AND idx=?", (level, index)).fetchone()
        if row is None:
            raise KeyError((level, index))
        h: bytes = row[0]
        return h

    def put_many(self, nodes: Iterable[tuple[int, int, bytes]]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?)", nodes)


@dataclass(frozen=True, slots=True)
class Leaf:
    index: int
    leaf: bytes
    exchange_id: str | None
    client: str | None
    provider: str | None


def connect(path: Path | str) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    # The indexes by exchange id and by subject take inserts at random places: a page cache that holds
    # their upper levels keeps each insert to a page or two (the default 2 MB does not, past a few
    # million leaves).
    db.execute("PRAGMA cache_size=-131072")
    return db


class Index:
    """The writer's side: appends leaves and checkpoints (in SQLite transactions it commits or undoes)."""

    def __init__(self, path: Path | str) -> None:
        self.db = connect(path)
        self.db.executescript(SCHEMA)
        self.tree = Tree(SqliteNodes(self.db), int(self.meta("size", 0)))
        self.leaves_offset = int(self.meta("leaves_offset", 0))
        self.checkpoints_offset = int(self.meta("checkpoints_offset", 0))
        self.vkey: str | None = self.meta("vkey", None)
        self._size_before: int | None = None
        self.added_accesses: list[tuple[str, int, bytes]] = []
        """The accesses (subject, leaf index, leaf) of the transaction begun last (for PostgreSQL)."""

    def meta(self, key: str, default: Any) -> Any:
        row = self.db.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return default if row is None else row[0]

    def close(self) -> None:
        self.db.close()

    def begin(self) -> None:
        self.db.execute("BEGIN")
        self._size_before = self.tree.size
        self.added_accesses = []

    def commit(self, *, leaves_offset: int | None = None, checkpoints_offset: int | None = None) -> None:
        if leaves_offset is not None:
            self.leaves_offset = leaves_offset
        if checkpoints_offset is not None:
            self.checkpoints_offset = checkpoints_offset
        self.db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("size", self.tree.size), ("leaves_offset", self.leaves_offset),
             ("checkpoints_offset", self.checkpoints_offset), ("vkey", self.vkey)],
        )  # fmt: skip
        self.db.execute("COMMIT")
        self._size_before = None

    def rollback(self) -> None:
        self.db.execute("ROLLBACK")
        if self._size_before is not None:
            self.tree.size = self._size_before
            self.tree.forget_edge()
        self.added_accesses = []
        self.vkey = self.meta("vkey", None)
        self._size_before = None

    def recent_exchanges(self, n: int) -> list[str]:
        """The exchange ids of the last ``n`` leaves, oldest first."""
        rows = self.db.execute(
            "SELECT exchange_id FROM leaves WHERE idx >= ? AND exchange_id IS NOT NULL ORDER BY idx",
            (max(0, self.tree.size - n),),
        ).fetchall()
        return [r[0] for r in rows]

    def has_exchange(self, exchange_id: str) -> bool:
        row = self.db.execute("SELECT 1 FROM leaves WHERE exchange_id=? LIMIT 1", (exchange_id,)).fetchone()
        return row is not None

    def append(self, leaves: Sequence[bytes]) -> int:
        """Append leaves (inside :meth:`begin`); the index of the first."""
        first = self.tree.size
        self.tree.append([leaf_hash(leaf) for leaf in leaves])
        rows, accesses = [], []
        for i, leaf in enumerate(leaves, first):
            f = leaf_fields(leaf)
            if f.kind == KEY_LEAF and f.vkey:
                self.vkey = f.vkey
            rows.append((i, f.exchange_id, f.client, f.provider, leaf))
            if f.subject:
                accesses.append((f.subject, i))
                self.added_accesses.append((f.subject, i, leaf))
        self.db.executemany("INSERT OR REPLACE INTO leaves VALUES (?, ?, ?, ?, ?)", rows)
        if accesses:
            self.db.executemany("INSERT OR REPLACE INTO accesses VALUES (?, ?)", accesses)
        return first

    def add_checkpoint(self, size: int, note: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?)", (size, note))


class Reader:
    """The API's side: committed leaves, proofs and checkpoints only (its own connection)."""

    def __init__(self, path: Path | str) -> None:
        self.db = connect(path)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def size(self) -> int:
        row = self.db.execute("SELECT v FROM meta WHERE k='size'").fetchone()
        return 0 if row is None else int(row[0])

    def tree(self) -> Tree:
        return Tree(SqliteNodes(self.db), self.size())

    def latest_checkpoint(self) -> tuple[int, str] | None:
        row = self.db.execute("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def checkpoint(self, size: int) -> str | None:
        row = self.db.execute("SELECT note FROM checkpoints WHERE size=?", (size,)).fetchone()
        return None if row is None else str(row[0])

    def by_exchange(self, exchange_id: str) -> Leaf | None:
        row = self.db.execute(
            "SELECT idx, leaf, exchange_id, client, provider FROM leaves WHERE exchange_id=? ORDER BY idx "
            "LIMIT 1",
            (exchange_id,),
        ).fetchone()
        return None if row is None else Leaf(*row)

    def accesses(self, subject: str, limit: int) -> list[Leaf]:
        rows = self.db.execute(
            "SELECT l.idx, l.leaf, l.exchange_id, l.client, l.provider FROM accesses a "
            "JOIN leaves l ON l.idx = a.idx WHERE a.subject=? ORDER BY a.idx LIMIT ?",
            (subject, limit),
        ).fetchall()
        return [Leaf(*r) for r in rows]
