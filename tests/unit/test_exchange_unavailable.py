"""A request that cannot be handed to Kafka is a clear 503, not a 500 (fake producer)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry

from broker.contracts.catalog import Catalog, Service
from broker.contracts.registry import Agency, Registry
from broker.errors import Unavailable
from broker.gateway.context import Exchange
from broker.gateway.exchange import _round_trip
from broker.gateway.limits import Limits
from broker.gateway.replies import ReplyRouter
from broker.gateway.state import Gateway
from broker.kafka import Reachability
from broker.kafka.routing import LeaderWatch
from broker.metrics import GatewayMetrics
from broker.settings import Settings
from tests.fixtures import write_contracts, write_registry


class _NoMetadata:
    """No partition metadata yet: the producer chooses (as aiokafka's before its first send)."""

    class cluster:
        @staticmethod
        def partitions_for_topic(topic: str) -> None:
            return None

        @staticmethod
        def leader_for_partition(partition: Any) -> None:
            return None


class DeadProducer:
    client = _NoMetadata()

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        raise KafkaTimeoutError("no broker answered")


class SilentProducer:
    """Takes the request but Kafka never acknowledges it (a paused broker)."""

    client = _NoMetadata()

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        return asyncio.get_running_loop().create_future()


class RecordingProducer(SilentProducer):
    """Keeps the headers of what it was given."""

    def __init__(self) -> None:
        self.headers: list[tuple[str, bytes]] = []

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        self.headers = list(kwargs.get("headers") or [])
        return await super().send(*args, **kwargs)


def fake_gateway(
    tmp_path: Path, producer: Any, echo_timeout_ms: int = 5000, send_within_s: float = 6.0
) -> tuple[Gateway, Service, Agency]:
    """A gateway worker's parts around ``producer``, with no Kafka; the test provider's echo service."""
    settings = Settings(kafka_bootstrap="127.0.0.1:1", kafka_send_within_s=send_within_s)
    catalog = Catalog.load(write_contracts(tmp_path, "prov", echo_timeout_ms=echo_timeout_ms))
    registry = Registry.load(write_registry(tmp_path, "prov"), catalog)
    metrics = GatewayMetrics(CollectorRegistry())
    gw = Gateway(
        settings=settings, catalog=catalog, registry=registry, metrics=metrics,
        limits=Limits(default_rate=10, max_in_flight=10),
        replies=ReplyRouter(settings, "ndxp.reply.t", metrics),
        recorder=None, stats=None, exchanges=None,  # type: ignore[arg-type]
    )  # fmt: skip
    gw.producer = producer
    gw.leaders = LeaderWatch(producer)
    svc, agency = catalog.get("prov", "echo"), registry.authenticate("key-alice")
    assert svc is not None
    assert agency is not None
    return gw, svc, agency


@pytest.mark.parametrize("producer", [DeadProducer(), SilentProducer()], ids=["refused", "never-acked"])
async def test_kafka_hand_off_failure_is_503_unavailable_and_leaves_nothing_in_flight(
    tmp_path: Path, producer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, svc, agency = fake_gateway(tmp_path, producer, send_within_s=0.3)
    ex = Exchange(id="x1", gateway="ndxp.reply.t", agency=agency, svc=svc, body=b'{"msg": "a"}')
    with pytest.raises(Unavailable) as info:
        await _round_trip(gw, ex)
    # Not the service's timeout (504): Kafka not taking the request is "unavailable", retried soon.
    assert info.value.status == 503
    assert info.value.retry_after == 1
    assert ex.t_sent is None, "the provider was never asked"
    assert gw.replies.in_flight == 0
    assert gw.metrics.registry.get_sample_value("ndxp_gateway_in_flight") == 0


async def test_the_deadline_the_provider_sees_is_now_plus_the_service_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation once missed: a deadline header off by a factor (the provider would work for nobody)."""
    import time

    from broker.model.envelope import RequestMeta

    producer = RecordingProducer()
    gw, svc, agency = fake_gateway(tmp_path, producer, send_within_s=0.2, echo_timeout_ms=4000)
    ex = Exchange(id="x2", gateway="ndxp.reply.t", agency=agency, svc=svc, body=b'{"msg": "a"}')
    before = time.time() * 1000
    with pytest.raises(Unavailable):
        await _round_trip(gw, ex)
    meta = RequestMeta.from_headers(producer.headers)
    assert before + 4000 - 50 <= meta.deadline_ms <= time.time() * 1000 + 4000, (
        f"deadline {meta.deadline_ms - before:.0f} ms ahead, want the service's 4000 ms"
    )


async def test_a_keyed_hand_off_answered_503_runs_its_late_hook_once_kafka_acknowledges_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event published during an outage is answered 503, yet the producer keeps the record and
    Kafka may take it later: then (and only then) it is counted. Mutation once missed: the shielded
    delivery dropped, the publication delivered to subscribers and never counted."""
    from broker.gateway.recorder import TxRecorder

    producer = SilentProducer()
    futures: list[asyncio.Future[Any]] = []

    async def send(*args: Any, **kwargs: Any) -> Any:
        futures.append(await SilentProducer.send(producer, *args, **kwargs))
        return futures[-1]

    producer.send = send  # type: ignore[method-assign]
    gw, _, _ = fake_gateway(tmp_path, producer, send_within_s=0.2)
    gw.recorder = TxRecorder("ndxp.tx", gw.metrics)
    counted: list[int] = []

    async def late() -> None:
        counted.append(1)

    for hook in (late, None):
        with pytest.raises(Unavailable):
            await gw.hand_off("ndxp.events.t", b"{}", what="the event", key=b"s1", if_late=hook)
    assert len(futures) == 2
    assert not futures[0].cancelled(), "the delivery outlives its request"
    assert futures[1].cancelled(), "without a hook, nothing waits for it"
    futures[0].set_result(object())
    await asyncio.sleep(0.01)
    assert counted == [1]
    await gw.recorder.stop(within_s=0.1)


def test_a_record_waits_the_usual_time_or_what_is_left_of_the_deadline(tmp_path: Path) -> None:
    """The provider has acted once a request is in Kafka: its record waits for a slow Kafka (a broker
    being fenced) until the service's deadline, and at least the usual wait; not at all with Kafka
    known unreachable."""
    from broker.gateway.exchange import _record_within
    from broker.gateway.recorder import TxRecorder

    gw, svc, agency = fake_gateway(tmp_path, SilentProducer(), echo_timeout_ms=20_000, send_within_s=6.0)
    gw.recorder = TxRecorder("ndxp.tx", gw.metrics, within_s=6.0)
    gw.kafka = Reachability(gw.producer)
    ex = Exchange(id="x1", gateway="ndxp.reply.t", agency=agency, svc=svc)
    assert 19.0 < _record_within(gw, ex) <= 20.01
    ex.t_in -= 18_000  # the provider took 18 s of the 20
    assert _record_within(gw, ex) == 6.0
    ex.svc = None  # rejected before a service was known
    assert _record_within(gw, ex) == 6.0
    gw.kafka.ok = False
    assert _record_within(gw, ex) == 0.0
