"""Gateway side: transaction records batched off the hot path to ``ndxp.tx``.

``record()`` only appends to a queue. A background task sends what is
queued with the gateway's idempotent producer; a record whose send fails
goes back to the head of the queue, is retried, and is counted. ``stop()``
flushes what is left; a record that still cannot be sent is logged and
counted as lost, never dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from aiokafka import AIOKafkaProducer

from broker.counter.records import TxRecord
from broker.metrics import GatewayMetrics

log = logging.getLogger(__name__)
BATCH = 2000


class TxRecorder:
    """Queues transaction records and sends them in batches."""

    def __init__(self, topic: str, metrics: GatewayMetrics) -> None:
        self.topic = topic
        self.metrics = metrics
        self._queue: deque[tuple[bytes, bytes]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None

    def record(self, rec: TxRecord) -> None:
        """Queue a record (never blocks, never raises)."""
        self._queue.append((rec.exchange_id.encode(), rec.encode()))
        self.metrics.tx_pending.inc()
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._task = asyncio.create_task(self._run(), name="tx-recorder")

    async def stop(self, flush_within_s: float) -> None:
        """Stop the loop, then send what is still queued (within the given time)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            async with asyncio.timeout(flush_within_s):
                while self._queue:
                    await self._send_batch()
        except TimeoutError:
            lost = len(self._queue)
            log.error("%d transaction records could not be sent to %s before shutdown", lost, self.topic)
            self.metrics.tx_lost.inc(lost)
            self.metrics.tx_pending.dec(lost)
            self._queue.clear()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._send_batch()

    async def _send_batch(self) -> None:
        assert self._producer is not None
        batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
        deliveries: list[asyncio.Future[object] | BaseException] = []
        for key, value in batch:
            try:
                deliveries.append(await self._producer.send(self.topic, value, key=key))
            except Exception as exc:  # e.g. no metadata for the topic yet
                deliveries.append(exc)
        results = await asyncio.gather(
            *(d for d in deliveries if not isinstance(d, BaseException)), return_exceptions=True
        )
        it = iter(results)
        outcomes = [d if isinstance(d, BaseException) else next(it) for d in deliveries]
        failed = [item for item, r in zip(batch, outcomes, strict=True) if isinstance(r, BaseException)]
        sent = len(batch) - len(failed)
        if sent:
            self.metrics.tx_sent.inc(sent)
            self.metrics.tx_pending.dec(sent)
        if failed:
            self.metrics.tx_retries.inc(len(failed))
            log.warning("%d transaction records failed to send; retrying", len(failed))
            self._queue.extendleft(reversed(failed))
            await asyncio.sleep(0.5)
