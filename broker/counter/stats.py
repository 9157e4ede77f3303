"""Counts as stored in the compacted stats topic, and the gateway's view of them.

One message per (day, client, provider, service, outcome): key
``day|client|provider|service|outcome``, value ``{"count": n}``; compaction
keeps the latest. The gateway's :class:`StatsView` reads the topic from the
beginning (``read_committed``) and answers ``GET /v1/stats``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, NamedTuple

import orjson
from aiokafka import TopicPartition

from broker.kafka import (
    Batch,
    KafkaService,
    Topics,
    ensure_topics,
    make_consumer,
    read_compacted,
)
from broker.settings import Settings

log = logging.getLogger(__name__)


class StatKey(NamedTuple):
    day: str
    client: str
    provider: str
    service: str
    outcome: str
    mode: str = "sync"
    """Rows of sync exchanges have five parts (as before modes existed); async rows a sixth."""

    def encode(self) -> bytes:
        parts = self if self.mode != "sync" else self[:5]
        return "|".join(parts).encode()

    @classmethod
    def decode(cls, raw: bytes) -> StatKey:
        parts = raw.decode().split("|")
        if len(parts) not in (5, 6):
            raise ValueError(f"a stats key has 5 or 6 parts: {raw!r}")
        return cls(*parts)


def summarise(counts: dict[StatKey, int], day: str) -> dict[str, Any]:
    """The public shape of ``/v1/stats`` for one day: exchanges, and events published and delivered."""
    by: dict[str, dict[str, int]] = {
        k: defaultdict(int) for k in ("by_outcome", "by_client", "by_provider", "by_service", "by_mode")
    }
    published: dict[str, int] = defaultdict(int)
    delivered: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    total = 0
    for key, n in counts.items():
        if key.day != day or n == 0:
            continue
        if key.mode == "event":
            published[f"{key.provider}/{key.service}"] += n
            continue
        if key.mode == "delivery":
            delivered[key.client][f"{key.provider}/{key.service}"] += n
            continue
        total += n
        by["by_outcome"][key.outcome] += n
        by["by_client"][key.client] += n
        by["by_provider"][key.provider] += n
        by["by_service"][f"{key.provider}/{key.service}"] += n
        by["by_mode"][key.mode] += n
    events = {
        "published": dict(sorted(published.items())),
        "delivered": {c: dict(sorted(v.items())) for c, v in sorted(delivered.items())},
    }
    return {
        "day": day,
        "total": total,
        **{k: dict(sorted(v.items())) for k, v in by.items()},
        "events": events,
    }


class StatsView(KafkaService):
    """Follows the stats topic; the counts the counter has committed."""

    poll_timeout_ms = 500
    cancel_on_stop = True

    def __init__(self, settings: Settings) -> None:
        super().__init__("stats view")
        self.settings = settings
        self.counts: dict[StatKey, int] = {}

    async def _open(self) -> None:
        await ensure_topics(self.settings, [Topics(self.settings).stats()])
        self.consumer = make_consumer(self.settings, group_id=None, isolation_level="read_committed")
        await self.consumer.start()
        tp = TopicPartition(self.settings.stats_topic, 0)
        for key, value in (await read_compacted(self.consumer, tp)).items():
            self._apply(key, value)

    def _apply(self, key: bytes, value: bytes) -> None:
        try:
            self.counts[StatKey.decode(key)] = int(orjson.loads(value)["count"])
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring malformed stats row %r: %s", key, exc)

    async def _on_batch(self, batch: Batch) -> None:
        for messages in batch.values():
            for msg in messages:
                if msg.key is not None and msg.value is not None:
                    self._apply(msg.key, msg.value)
