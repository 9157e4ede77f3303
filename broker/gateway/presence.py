"""Which gateway instances are alive now, so that each takes its share of every client's limits.

Every worker of every instance writes its instance id to the presence topic once a second and reads
the topic from its end: an instance heard from within ``EXPIRY_S`` is alive. The count reaches
:class:`~broker.gateway.limits.Limits` (``instances``), which divides a client's rate and in-flight
cap by it. A new instance is counted by the others within a second; one that stops says so and is
no longer counted; one that died stops being counted ``EXPIRY_S`` later (meanwhile the survivors
hold a client to less than its limit, never more).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from broker.gateway.limits import Limits
from broker.kafka import Batch, KafkaService, Producer, Topics, Written, ensure_topics, make_consumer
from broker.settings import Settings

log = logging.getLogger(__name__)

BEAT_S = 1.0
EXPIRY_S = 4.0
LEAVING = b"leaving"


def _quiet(sent: asyncio.Future[Written]) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.warning("presence beat not written: %s", sent.exception())


class Presence(KafkaService):
    """One worker's view of the live gateway instances (itself always among them)."""

    cancel_on_stop = True
    poll_timeout_ms = 500

    def __init__(self, settings: Settings, limits: Limits) -> None:
        super().__init__("gateway presence")
        self.settings = settings
        self.limits = limits
        self.topic = Topics(settings).presence().name
        self.me = settings.instance_id
        self._seen: dict[str, float] = {}
        self._producer: Producer | None = None

    @property
    def instances(self) -> int:
        now = time.monotonic()
        return 1 + sum(1 for i, t in self._seen.items() if i != self.me and now - t < EXPIRY_S)

    def start_beating(self, producer: Producer) -> None:
        self._producer = producer
        self.spawn(self._beat(), "beat")

    async def _open(self) -> None:
        await ensure_topics(self.settings, [Topics(self.settings).presence()])
        self.consumer = consumer = make_consumer(self.settings, group_id=None, fetch_max_wait_ms=500)
        await consumer.start()
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        # Beats of the last seconds tell who is alive: read from a little before now.
        since = int((time.time() - EXPIRY_S) * 1000)
        found = await consumer.offsets_for_times({tp: since})
        at = found.get(tp)
        if at is not None:
            consumer.seek(tp, at.offset)
        else:
            await consumer.seek_to_end(tp)

    async def _on_batch(self, batch: Batch) -> None:
        now = time.monotonic()
        wall = time.time()
        for records in batch.values():
            for record in records:
                if not record.key:
                    continue
                instance = record.key.decode(errors="replace")
                if record.value == LEAVING:
                    self._seen.pop(instance, None)  # its other workers' next beats bring it back
                    continue
                # A beat read late (at start) counts from when it was written, by this clock.
                age = max(0.0, wall - record.timestamp / 1000)
                self._seen[instance] = now - min(age, EXPIRY_S)
        if len(self._seen) > 10_000:  # bounded: forget instances long gone
            self._seen = {i: t for i, t in self._seen.items() if now - t < EXPIRY_S}
        self._apply()

    def _apply(self) -> None:
        count = self.instances
        if count != self.limits.instances:
            log.info("gateway instances alive: %d (each takes 1/%d of a client's limits)", count, count)
            self.limits.instances = count

    async def leave(self) -> None:
        """Say this instance is going (its last worker's word counts: the others' beats outlive it),
        then stop."""
        if self._producer is not None:
            with contextlib.suppress(KafkaError, asyncio.TimeoutError):
                async with asyncio.timeout(2):
                    await (await self._producer.send(self.topic, LEAVING, key=self.me.encode()))
        await self.stop()

    async def _beat(self) -> None:
        assert self._producer is not None
        key = self.me.encode()
        while True:
            try:
                sent = await self._producer.send(self.topic, b"", key=key)
                sent.add_done_callback(_quiet)
            except KafkaError as exc:
                log.warning("presence beat not sent: %s", exc)
            self._apply()  # an instance that went quiet stops counting even when nothing arrives
            await asyncio.sleep(BEAT_S)
