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
from broker.admin.api import Admin
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
    "running_admin",
    "running_counter",
    "running_gateway",
    "running_keeper",
    "settled",
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
async def running_admin(settings: Settings) -> AsyncIterator[tuple[ClientSession, Admin]]:
    """The management API in-process: a session on it (no key set: each call sends its own)."""
    from broker.admin.api import ADMIN
    from broker.admin.serve import create_admin_app

    app = create_admin_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession(base_url=str(server.make_url(""))) as session:
            yield session, app[ADMIN]
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
    shows, with no sleep "long enough for an over-count to appear". Records
    the keeper and the adapters write in transactions are followed by a
    commit marker that takes an offset and is never consumed: what lies
    between the group's committed offset and the end is read, and only
    records count as "behind".
    """
    group = make_consumer(settings, group_id=f"{settings.stats_topic}.counter")
    probe = make_consumer(settings, group_id=None, isolation_level="read_committed")
    await group.start()  # not subscribed: it reads the group's offsets, it does not join the group
    await probe.start()
    behind: dict[int, int] = {}
    try:
        tps = await topic_partitions(group, settings.tx_topic)
        probe.assign(tps)
        async with asyncio.timeout(within_s):
            while True:
                ends = await group.end_offsets(tps)
                behind = {}
                for tp in tps:
                    committed = await group.committed(tp) or 0
                    if committed >= ends[tp]:
                        continue
                    probe.seek(tp, committed)
                    unread = 0
                    while await probe.position(tp) < ends[tp]:
                        unread += sum(len(r) for r in (await probe.getmany(tp, timeout_ms=200)).values())
                    if unread:
                        behind[tp.partition] = unread
                if not behind:
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"the counter did not catch up within {within_s}s: {behind}") from None
    finally:
        await probe.stop()
        await group.stop()


async def settled(gw: Gateway, settings: Settings) -> None:
    """Nothing more can be counted: this gateway's tally of rejections is written and the counter is
    past every record in Kafka."""
    await gw.recorder.flush(5.0)
    await counter_caught_up(settings)


async def view_caught_up(view: StatsView, within_s: float = 30) -> None:
    """Wait until a stats view has read the stats topic to its (committed) end."""
    consumer = view.consumer
    assert consumer is not None, "the view is not started"
    tp = TopicPartition(view.settings.stats_topic, 0)
    async with asyncio.timeout(within_s):
        while await consumer.position(tp) < (await consumer.end_offsets([tp]))[tp]:
            await asyncio.sleep(0.05)
