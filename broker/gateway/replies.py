"""Reply routing: the worker's own reply topic and its in-flight table.

Each gateway worker owns one reply topic with one partition, assigned
manually (no consumer group), read from its end with ``read_committed`` so
that only replies of committed adapter transactions are seen. The in-flight
table maps exchange id → future; a reply with no waiting future is late and
is dropped and counted. Every provider's adapter may write to this topic: a
reply for an exchange whose provider runs its own adapter (it has a reply
secret) is taken only with that provider's signature (``ndxp-origin``);
without it, it is dropped, counted and logged, and the exchange still waits
for its real reply.
"""

from __future__ import annotations

import asyncio
import logging

from broker.kafka import Batch, KafkaService, Topics, ensure_topics, make_consumer, topic_partitions
from broker.metrics import GatewayMetrics
from broker.model.envelope import H_HEARTBEAT, Reply, from_provider
from broker.settings import Settings

log = logging.getLogger(__name__)


class ReplyRouter(KafkaService):
    """Consumes one reply topic and resolves the futures of waiting exchanges."""

    poll_timeout_ms = 500
    cancel_on_stop = True

    def __init__(self, settings: Settings, topic: str, metrics: GatewayMetrics) -> None:
        super().__init__(f"replies {topic}")
        self.settings = settings
        self.topic = topic
        self.metrics = metrics
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._proof: dict[str, tuple[str, bytes]] = {}
        """Exchange id → (provider, its reply secret), for the exchanges whose reply must be signed."""

    @property
    def ready(self) -> bool:
        """Assigned and positioned, and its loop is running."""
        return self.healthy

    async def _open(self) -> None:
        """Create and assign the reply topic; ready once its position is known."""
        await ensure_topics(
            self.settings,
            [Topics(self.settings).reply(self.topic)],
        )
        self.consumer = consumer = make_consumer(
            self.settings,
            group_id=None,
            isolation_level="read_committed",
            fetch_max_wait_ms=500,
            max_poll_records=2000,
        )
        await consumer.start()
        tps = await topic_partitions(consumer, self.topic)
        consumer.assign(tps)
        # Replies written before we started answer nobody that still waits.
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)

    async def _close(self) -> None:
        await super()._close()
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()

    def expect(
        self, exchange_id: str, provider: str = "", secret: bytes | None = None
    ) -> asyncio.Future[Reply]:
        """Register an exchange awaiting its reply (``secret``: its provider's reply secret, when its
        reply must carry the provider's signature)."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[exchange_id] = fut
        if secret is not None:
            self._proof[exchange_id] = (provider, secret)
        return fut

    def forget(self, exchange_id: str) -> None:
        """The exchange is over (answered or timed out): a later reply is late."""
        self._pending.pop(exchange_id, None)
        self._proof.pop(exchange_id, None)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def _on_batch(self, batch: Batch) -> None:
        for messages in batch.values():
            for msg in messages:
                if msg.headers and msg.headers[0][0] == H_HEARTBEAT:
                    continue  # this worker's own "still here"
                try:
                    reply = Reply.from_message(msg.headers or (), msg.value or b"")
                except ValueError as exc:
                    log.warning("dropping malformed reply at offset %s: %s", msg.offset, exc)
                    continue
                proof = self._proof.get(reply.exchange_id)
                if proof is not None and not from_provider(reply, msg.headers or (), proof[1]):
                    self.metrics.forged_replies.labels(proof[0]).inc()
                    log.warning("dropping a reply for %s's exchange %s without %s's signature",
                                proof[0], reply.exchange_id, proof[0])  # fmt: skip
                    continue
                self._proof.pop(reply.exchange_id, None)
                fut = self._pending.pop(reply.exchange_id, None)
                if fut is None or fut.done():
                    # Late (its exchange timed out) or a second reply (a lookup served again).
                    self.metrics.late_replies.inc()
                    continue
                fut.set_result(reply)
