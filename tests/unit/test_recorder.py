"""Transaction records are never dropped silently (a fake producer stands in for Kafka)."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from broker.counter.recorder import TxRecorder
from broker.counter.records import TxRecord, day_of
from broker.metrics import GatewayMetrics


class FlakyProducer:
    """Fails the first ``failures`` sends, then acknowledges everything."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[bytes] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.failures > 0:
            self.failures -= 1
            fut.set_exception(ConnectionError("broker gone"))
        else:
            self.sent.append(key)
            fut.set_result(None)
        return fut


def _rec(i: int) -> TxRecord:
    return TxRecord(
        exchange_id=f"x{i}", client="c", provider="p", service="s", outcome="ok", status=200, t_in=0
    )


async def test_failed_sends_are_retried_counted_and_none_is_lost() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    recorder = TxRecorder("ndxp.tx", metrics)
    producer = FlakyProducer(failures=3)
    recorder.start(producer)  # type: ignore[arg-type]
    for i in range(10):
        recorder.record(_rec(i))
    async with asyncio.timeout(10):
        while recorder.pending:
            await asyncio.sleep(0.05)
    await recorder.stop(flush_within_s=1)
    assert sorted(producer.sent) == sorted(f"x{i}".encode() for i in range(10))
    assert metrics.tx_retries._value.get() == 3
    assert metrics.tx_sent._value.get() == 10
    assert metrics.tx_pending._value.get() == 0


async def test_records_that_cannot_be_sent_by_shutdown_are_counted_as_lost() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    recorder = TxRecorder("ndxp.tx", metrics)
    recorder.start(FlakyProducer(failures=10**6))  # type: ignore[arg-type]
    for i in range(4):
        recorder.record(_rec(i))
    await recorder.stop(flush_within_s=0.3)
    assert metrics.tx_lost._value.get() == 4
    assert recorder.pending == 0


def test_days_are_counted_in_vietnam_time() -> None:
    # 2026-01-01 18:30 UTC is already 2026-01-02 in Hà Nội.
    assert day_of(1767292200000, 7) == "2026-01-02"
    assert day_of(1767292200000, 0) == "2026-01-01"
