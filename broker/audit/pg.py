"""The data tracker on PostgreSQL (``NDXP_TRACKER_DSN``): accesses by subject, for several readers.

The exchange log's writer adds each batch's accesses after Kafka and its SQLite index have committed
them, keyed by (subject, leaf index): adding the same access twice (a restart, a catch-up) changes
nothing. On start it adds what the index holds beyond PostgreSQL's newest leaf, so the two agree.
Readers get the same rows as from SQLite (:class:`~broker.audit.index.Leaf`), so the API builds the
same answer from either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from broker.audit.index import Index, Leaf, leaf_fields

SCHEMA = """
CREATE TABLE IF NOT EXISTS ndxp_tracker_accesses (
    subject text NOT NULL,
    idx bigint NOT NULL,
    leaf bytea NOT NULL,
    PRIMARY KEY (subject, idx)
)
"""


class PgTracker:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.pool: Any = None

    async def start(self) -> None:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, command_timeout=10)
        async with self.pool.acquire() as conn:
            await conn.execute(SCHEMA)

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def newest(self) -> int:
        """The newest leaf index it holds an access of (-1: none)."""
        async with self.pool.acquire() as conn:
            got = await conn.fetchval("SELECT coalesce(max(idx), -1) FROM ndxp_tracker_accesses")
            return int(got)

    async def add(self, rows: Sequence[tuple[str, int, bytes]]) -> None:
        """(subject, leaf index, leaf) rows; those already there are left as they are."""
        if not rows:
            return
        async with self.pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO ndxp_tracker_accesses (subject, idx, leaf) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING",
                rows,
            )

    async def catch_up(self, index: Index, batch: int = 5000) -> int:
        """Add the index's accesses past PostgreSQL's newest; how many."""
        after, added = await self.newest(), 0
        while True:
            found = index.db.execute(
                "SELECT a.subject, a.idx, l.leaf FROM accesses a JOIN leaves l ON l.idx = a.idx "
                "WHERE a.idx > ? ORDER BY a.idx LIMIT ?",
                (after, batch),
            ).fetchall()
            if not found:
                return added
            await self.add([(s, int(i), bytes(leaf)) for s, i, leaf in found])
            added += len(found)
            after = int(found[-1][1])

    async def accesses(self, subject: str, limit: int) -> list[Leaf]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT idx, leaf FROM ndxp_tracker_accesses WHERE subject = $1 ORDER BY idx LIMIT $2",
                subject,
                limit,
            )
        out = []
        for r in rows:
            leaf = bytes(r["leaf"])
            f = leaf_fields(leaf)
            out.append(Leaf(int(r["idx"]), leaf, f.exchange_id, f.client, f.provider))
        return out
