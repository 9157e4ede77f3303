"""Running the test provider's adapter and a gateway worker in-process, on a real Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from adapters.runtime.adapter import Adapter
from broker.contracts.catalog import Catalog
from broker.contracts.registry import Registry
from broker.counter.counter import TxCounter
from broker.counter.stats import StatsView
from broker.gateway.app import create_app
from broker.gateway.state import GATEWAY, Gateway
from broker.kafka import make_consumer, topic_partitions
from broker.keeper.keeper import ExchangeKeeper
from broker.metrics import CounterMetrics, KeeperMetrics
from broker.settings import Settings
from tests.fixtures import EchoHandlers, key_hash, write_contracts, write_registry

__all__ = [
    "EchoHandlers",
    "counter_caught_up",
    "key_hash",
    "running_adapter",
    "running_counter",
    "running_gateway",
    "running_keeper",
    "view_caught_up",
    "write_contracts",
    "write_registry",
]


@asynccontextmanager
async def running_adapter(
    settings: Settings, provider: str, handlers: EchoHandlers
) -> AsyncIterator[Adapter]:
    async with Adapter(settings, provider, handlers.handlers()) as adapter:
        await adapter.wait_assigned()
        yield adapter


@asynccontextmanager
async def running_gateway(
    settings: Settings, *, worker: int = 0
) -> AsyncIterator[tuple[ClientSession, Gateway]]:
    app: web.Application = create_app(settings, worker=worker)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession(base_url=str(server.make_url(""))) as session:
            yield session, app[GATEWAY]
    finally:
        await server.close()


@asynccontextmanager
async def running_keeper(settings: Settings) -> AsyncIterator[ExchangeKeeper]:
    catalog = Catalog.load(settings.schemas_dir)
    keeper = ExchangeKeeper(
        settings, catalog, Registry.load(settings.registry_path, catalog), KeeperMetrics(CollectorRegistry())
    )
    async with keeper:
        yield keeper


@asynccontextmanager
async def running_counter(settings: Settings) -> AsyncIterator[TxCounter]:
    async with TxCounter(settings, CounterMetrics(CollectorRegistry())) as counter:
        yield counter


async def counter_caught_up(settings: Settings, within_s: float = 60) -> None:
    """Wait until the counter has committed past every transaction record in Kafka.

    Then nothing more can be counted: a count that is too high is final and
    shows, with no sleep "long enough for an over-count to appear".
    """
    consumer = make_consumer(settings, group_id=f"{settings.stats_topic}.counter")
    await consumer.start()  # not subscribed: it reads the group's offsets, it does not join the group
    try:
        tps = await topic_partitions(consumer, settings.tx_topic)
        async with asyncio.timeout(within_s):
            while True:
                ends = await consumer.end_offsets(tps)
                behind = {tp.partition: ends[tp] - (await consumer.committed(tp) or 0) for tp in tps}
                if not any(behind.values()):
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"the counter did not catch up within {within_s}s: {behind}") from None
    finally:
        await consumer.stop()


async def view_caught_up(view: StatsView, within_s: float = 30) -> None:
    """Wait until a stats view has read the stats topic to its (committed) end."""
    consumer = view.consumer
    assert consumer is not None, "the view is not started"
    tp = TopicPartition(view.settings.stats_topic, 0)
    async with asyncio.timeout(within_s):
        while await consumer.position(tp) < (await consumer.end_offsets([tp]))[tp]:
            await asyncio.sleep(0.05)
