"""Gateway side: transaction records written to ``ndxp.tx`` before the answer.

An exchange is answered only once Kafka has acknowledged its record
(``acks=all``), so a gateway killed at any moment leaves no answered
exchange uncounted. ``write()`` hands the record to the gateway's producer,
which batches concurrent exchanges' records (and their requests) into the
same produce requests, and awaits the acknowledgement. A record that cannot
be written within ``within_s`` is logged and counted as lost
(``ndxp_tx_records_lost_total``, alerted on), never dropped silently.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer

from broker.counter.records import TxRecord
from broker.metrics import GatewayMetrics

log = logging.getLogger(__name__)


class TxRecorder:
    """Writes transaction records and waits for Kafka to acknowledge them."""

    def __init__(self, topic: str, metrics: GatewayMetrics) -> None:
        self.topic = topic
        self.metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self._pending = 0

    @property
    def pending(self) -> int:
        """Records handed to Kafka and not yet acknowledged."""
        return self._pending

    def start(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def write(self, rec: TxRecord, within_s: float) -> bool:
        """Write ``rec`` and wait for its acknowledgement; False (logged, counted) if it failed."""
        producer = self._producer
        assert producer is not None, "TxRecorder.start() was not called"
        self._pending += 1
        self.metrics.tx_pending.inc()
        try:
            async with asyncio.timeout(within_s):
                # No key: the counter dedupes by exchange id, whatever the partition.
                delivery = await producer.send(self.topic, rec.encode())
                await delivery
        except Exception as exc:
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
