"""Gateway side: transaction records written to ``ndxp.tx`` before the answer.

An exchange is answered only once Kafka has acknowledged its record
(``acks=all``), so a gateway killed at any moment leaves no answered
exchange uncounted. ``write()`` hands the record to the gateway's producer,
which batches concurrent exchanges' records (and their requests) into the
same produce requests, and awaits the acknowledgement. A record that cannot
be written within ``within_s`` is logged and counted as lost
(``ndxp_tx_records_lost_total``, alerted on), never dropped silently.

Unauthenticated rejections (a flood of failed logins costs nothing per
request) are not written one by one: ``tally()`` adds them up per
(provider, service, outcome, status), and once a second one record with
their ``count`` goes to Kafka. The tally is bounded by those keys; what
cannot be written by shutdown is counted as lost.

What Kafka acknowledges after the gateway answered 503 (a publication the
producer sent again once Kafka was back) is recorded then:
``when_delivered()`` follows the delivery past its request and runs what
counts it; shutdown waits for those within its grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from broker.kafka import Sender, Written
from broker.kafka.routing import LeaderWatch
from broker.metrics import GatewayMetrics
from broker.model.envelope import new_exchange_id
from broker.model.records import TxRecord

log = logging.getLogger(__name__)
TALLY_INTERVAL_S = 1.0


class TxRecorder:
    """Writes transaction records and waits for Kafka to acknowledge them."""

    def __init__(self, topic: str, metrics: GatewayMetrics, *, within_s: float = 6.0) -> None:
        self.topic = topic
        self.metrics = metrics
        self.within_s = within_s
        """The usual wait for Kafka to acknowledge a record (``kafka_send_within_s``)."""
        self._producer: Sender | None = None
        self._leaders: LeaderWatch | None = None
        self._pending = 0
        self._tally: dict[tuple[str, str, str, int], tuple[TxRecord, int]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._late: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Records handed to Kafka and not yet acknowledged."""
        return self._pending

    def start(self, producer: Sender, leaders: LeaderWatch | None = None) -> None:
        self._producer = producer
        self._leaders = leaders
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="tx tally")

    async def stop(self, within_s: float) -> None:
        """Write what is tallied (within ``within_s``); what cannot be written is counted lost."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self._follow_late(within_s)
        await self.flush(within_s)
        lost = sum(n for _, n in self._tally.values())
        if lost:
            log.error("%d tallied rejections could not be recorded before shutdown", lost)
            self.metrics.tx_lost.inc(lost)
            self._tally.clear()

    def when_delivered(
        self, delivery: asyncio.Future[Written], then: Callable[[], Awaitable[object]]
    ) -> None:
        """Run ``then`` once ``delivery`` (given up on by its request) is acknowledged after all."""

        async def follow() -> None:
            try:
                await delivery  # the producer's own delivery timeout bounds it
            except Exception:  # never reached Kafka: nothing happened, nothing to count
                return
            await then()

        self.metrics.tx_pending.inc()
        task = asyncio.create_task(follow(), name="late delivery")
        self._late.add(task)
        task.add_done_callback(self._late_done)

    def _late_done(self, task: asyncio.Task[None]) -> None:
        self._late.discard(task)
        self.metrics.tx_pending.dec()
        if not task.cancelled() and task.exception() is not None:
            log.error("recording a late delivery failed: %s", task.exception())

    async def _follow_late(self, within_s: float) -> None:
        """Wait up to ``within_s`` for late deliveries; those still unsettled are counted lost."""
        if not self._late:
            return
        _, undecided = await asyncio.wait(set(self._late), timeout=within_s)
        for task in undecided:
            task.cancel()
        if undecided:
            log.error("%d late deliveries unsettled at shutdown: counted lost", len(undecided))
            self.metrics.tx_lost.inc(len(undecided))
        await asyncio.gather(*undecided, return_exceptions=True)

    def tally(self, rec: TxRecord) -> None:
        """Count an unauthenticated rejection; written with others of its kind within a second."""
        key = (rec.provider, rec.service, rec.outcome, rec.status)
        first, n = self._tally.get(key, (rec, 0))
        self._tally[key] = (first, n + 1)

    async def flush(self, within_s: float) -> None:
        """Write one record per tallied kind; a kind that fails stays tallied for the next round."""
        taken, self._tally = self._tally, {}
        for key, (first, n) in taken.items():
            rec = TxRecord(
                exchange_id=new_exchange_id(), client=first.client, provider=first.provider,
                service=first.service, outcome=first.outcome, status=first.status, t_in=first.t_in,
                t_out=first.t_out, gateway=first.gateway, count=n,
            )  # fmt: skip
            if not await self.write(rec, within_s, lost_on_failure=False):
                again, m = self._tally.get(key, (first, 0))
                self._tally[key] = (again, m + n)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(TALLY_INTERVAL_S)
            if self._tally:
                await self.flush(self.within_s)

    async def write(
        self, rec: TxRecord, within_s: float, *, lost_on_failure: bool = True, raw: bytes | None = None
    ) -> bool:
        """Write ``rec`` (``raw``: already encoded) and wait for its acknowledgement; False (logged,
        counted) if it failed."""
        value = rec.encode() if raw is None else raw
        producer = self._producer
        assert producer is not None, "TxRecorder.start() was not called"
        self._pending += 1
        self.metrics.tx_pending.inc()
        try:
            async with asyncio.timeout(within_s):
                # No key: the counter dedupes by exchange id, whatever the partition; so a record
                # that a stalled leader holds up is hedged to another (broker.kafka.routing).
                if self._leaders is not None:
                    await self._leaders.hedged(self.topic, value)
                else:
                    await (await producer.send(self.topic, value))
        except Exception as exc:
            if lost_on_failure:
                self.metrics.tx_lost.inc()
            log.error(
                "transaction record of exchange %s not written to %s: %s",
                rec.exchange_id,
                self.topic,
                exc or type(exc).__name__,
            )
            return False
        finally:
            self._pending -= 1
            self.metrics.tx_pending.dec()
        self.metrics.tx_sent.inc()
        return True
