"""Transaction records: acknowledged before the answer, never dropped silently (a fake producer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from broker.gateway.recorder import TxRecorder
from broker.kafka import Headers, Sender, Written
from broker.metrics import GatewayMetrics
from broker.model.records import TxRecord, day_of
from tests.fixtures import sample


@dataclass(frozen=True)
class RecordMetadata:
    topic: str
    partition: int
    offset: int


class FakeProducer(Sender):
    """Acknowledges, fails, or never answers a send, as told (typed as the recorder's :class:`Sender`)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sent: list[bytes] = []
        self.records: list[TxRecord] = []

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Written]:
        fut: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        if self.mode == "fail":
            fut.set_exception(ConnectionError("broker gone"))
        elif self.mode == "ok":
            assert value is not None
            self.records.append(TxRecord.decode(value))
            self.sent.append(self.records[-1].exchange_id.encode())
            fut.set_result(RecordMetadata(topic, 0, len(self.sent) - 1))
        return fut  # "hang": never acknowledged


def _rec(i: int) -> TxRecord:
    return TxRecord(
        exchange_id=f"x{i}", client="c", provider="p", service="s", outcome="ok", status=200, t_in=0
    )


def _value(metrics: GatewayMetrics, name: str) -> float:
    return sample(metrics.registry, name)


async def test_write_returns_only_once_kafka_acknowledged_the_record() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    recorder = TxRecorder("ndxp.tx", metrics)
    producer = FakeProducer("ok")
    recorder.start(producer)
    assert all([await recorder.write(_rec(i), within_s=1) for i in range(5)])
    assert producer.sent == [f"x{i}".encode() for i in range(5)]
    assert _value(metrics, "ndxp_tx_records_sent_total") == 5
    assert _value(metrics, "ndxp_tx_records_lost_total") == 0
    assert recorder.pending == 0


async def test_a_failed_send_is_reported_logged_and_counted_lost() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    recorder = TxRecorder("ndxp.tx", metrics)
    recorder.start(FakeProducer("fail"))
    assert await recorder.write(_rec(1), within_s=1) is False
    assert _value(metrics, "ndxp_tx_records_lost_total") == 1
    assert _value(metrics, "ndxp_tx_records_sent_total") == 0


async def test_an_unacknowledged_record_gives_up_within_the_bound() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    recorder = TxRecorder("ndxp.tx", metrics)
    recorder.start(FakeProducer("hang"))
    async with asyncio.timeout(30):  # a hang guard: write() gives up at its own 0.2 s bound
        assert await recorder.write(_rec(1), within_s=0.2) is False
    assert _value(metrics, "ndxp_tx_records_lost_total") == 1
    assert recorder.pending == 0


def test_day_of_uses_the_configured_utc_offset() -> None:
    # 2026-01-01 20:00 UTC is already 2026-01-02 in Vietnam (UTC+7).
    t = 1767297600000
    assert day_of(t, 0) == "2026-01-01"
    assert day_of(t, 7) == "2026-01-02"


def test_sticky_partitioner_keeps_keyless_records_together_and_keyed_ones_by_hash() -> None:
    from broker.kafka import StickyPartitioner

    sticky = StickyPartitioner(interval_s=3600)
    parts = [0, 1, 2, 3]
    assert len({sticky(None, parts, parts) for _ in range(100)}) == 1
    assert sticky(b"k", parts, parts) == sticky(b"k", parts, [])  # by key hash, as Kafka's own
    moving = StickyPartitioner(interval_s=0)
    assert len({moving(None, parts, parts) for _ in range(200)}) > 1


async def test_stop_writes_what_is_tallied_and_counts_lost_what_it_cannot() -> None:
    """Mutation once missed: a stop() that never flushes the tally of unauthenticated rejections."""
    for mode, sent, lost in (("ok", 1, 0), ("fail", 0, 7)):
        metrics = GatewayMetrics(CollectorRegistry())
        recorder = TxRecorder("ndxp.tx", metrics)
        producer = FakeProducer(mode)
        recorder.start(producer)
        for _ in range(7):
            recorder.tally(_rec(0))
        await recorder.stop(within_s=0.5)
        assert len(producer.sent) == sent, f"{mode}: one record for the 7 tallied rejections"
        lost_now = _value(metrics, "ndxp_tx_records_lost_total")
        assert lost_now == lost, f"{mode}: what could not be written is counted lost"
        if mode == "ok":
            assert _value(metrics, "ndxp_tx_records_sent_total") == 1


def test_rate_limits_are_split_across_gateway_workers() -> None:
    """Mutation once missed: each of N workers allowing the whole rate lets a client send N times it."""
    from broker.contracts.registry import Agency
    from broker.errors import RateLimited
    from broker.gateway.limits import Limits

    agency = Agency(id="a", code="A", name="A", rate_limit=10.0)
    for workers, allowed in ((1, 10), (2, 5), (5, 2)):
        limits = Limits(default_rate=1000, max_in_flight=100, workers=workers)
        granted = 0
        for _ in range(50):  # within one instant: the burst is the per-worker rate
            try:
                with limits.admit(agency):
                    granted += 1
            except RateLimited:
                continue
        assert granted == allowed, f"{workers} worker(s): {granted} admitted at once, want {allowed}"


async def test_tallied_rejections_become_one_record_per_kind_and_a_failed_write_keeps_them() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    recorder = TxRecorder("ndxp.tx", metrics)
    producer = FakeProducer("fail")
    recorder.start(producer)
    first = TxRecord(
        exchange_id="x-first", client="-", provider="p", service="s", outcome="unauthorized", status=401,
        t_in=1000.0, t_out=1001.0,
    )  # fmt: skip
    for _ in range(3):
        recorder.tally(first)
    for _ in range(2):
        recorder.tally(_rec(9))
    await recorder.flush(within_s=0.2)  # Kafka refuses: nothing lost yet, all still tallied
    assert _value(metrics, "ndxp_tx_records_lost_total") == 0
    producer.mode = "ok"
    await recorder.flush(within_s=0.2)
    by_outcome = {r.outcome: r for r in producer.records}
    assert {k: r.count for k, r in by_outcome.items()} == {"unauthorized": 3, "ok": 2}
    kept = by_outcome["unauthorized"]
    assert (kept.t_in, kept.t_out, kept.status, kept.provider) == (1000.0, 1001.0, 401, "p")
    assert kept.exchange_id != "x-first", "a tally is its own record, under a fresh id"
    await recorder.stop(within_s=0.2)
    assert len(producer.records) == 2, "stop() has nothing left to write"


async def test_a_late_delivery_is_recorded_once_acknowledged_and_never_if_it_failed() -> None:
    """What Kafka acknowledges after its request gave up (503) is counted then; a send that failed is
    not; one still unsettled at shutdown is counted lost, within the grace."""
    metrics = GatewayMetrics(CollectorRegistry())
    recorder = TxRecorder("ndxp.tx", metrics)
    recorder.start(FakeProducer("ok"))
    loop = asyncio.get_running_loop()
    acked, failed, unsettled = (loop.create_future() for _ in range(3))
    ran: list[str] = []

    def then(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            ran.append(name)

        return run

    recorder.when_delivered(acked, then("acked"))
    recorder.when_delivered(failed, then("failed"))
    recorder.when_delivered(unsettled, then("unsettled"))
    assert _value(metrics, "ndxp_tx_records_pending") == 3
    acked.set_result(RecordMetadata("ndxp.events", 0, 7))
    failed.set_exception(ConnectionError("broker gone"))
    await asyncio.sleep(0.01)
    assert ran == ["acked"]
    async with asyncio.timeout(30):  # a hang guard: stop() waits 0.2 s for the unsettled one
        await recorder.stop(within_s=0.2)
    assert ran == ["acked"]
    assert _value(metrics, "ndxp_tx_records_lost_total") == 1
    assert _value(metrics, "ndxp_tx_records_pending") == 0


def test_id_key_is_a_uuids_bytes_and_a_digest_of_anything_else() -> None:
    import uuid

    from broker.model.records import id_key

    for _ in range(1000):
        u = uuid.uuid4()
        assert id_key(str(u)) == u.bytes
        assert id_key(str(u).upper()) == u.bytes
    # Not a UUID, though 36 characters with the dashes where a UUID has them: a digest, not fromhex's bytes.
    spaced = "0123 567-89ab-cdef-0123-456789abcdef"
    assert len(id_key(spaced)) == 16
    assert id_key(spaced) != id_key("01230567-89ab-cdef-0123-456789abcdef")
    assert id_key("not-an-id") != id_key("not-an-id2")
    assert len(id_key("not-an-id")) == 16
