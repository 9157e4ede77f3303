"""The demo platform in one process: land backend, every simulated agency, a gateway."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from adapters.demo.land_backend import create_backend
from adapters.demo.serve import build_adapters
from broker.contracts.catalog import Catalog
from broker.metrics import AdapterMetrics
from broker.settings import Settings
from tests.integration.exchange_fixtures import running_gateway


@asynccontextmanager
async def demo_platform(settings: Settings) -> AsyncIterator[tuple[ClientSession, Settings]]:
    """Yields an HTTP session on a gateway in front of every demo agency."""
    run = uuid.uuid4().hex[:8]
    settings = settings.replace(
        instance_id=f"demo-{run}",
        tx_topic=f"{settings.tx_topic}.demo-{run}",
        stats_topic=f"{settings.stats_topic}.demo-{run}",
    )
    backend = TestServer(create_backend(settings), host="127.0.0.1")
    await backend.start_server()
    settings = settings.replace(land_backend_url=str(backend.make_url("")).rstrip("/"))
    try:
        async with AsyncExitStack() as stack:
            providers = Catalog.load(settings.schemas_dir).providers()
            adapters = build_adapters(settings, providers, AdapterMetrics(CollectorRegistry()), stack)
            for adapter in adapters:
                stack.push_async_callback(adapter.stop)
            await asyncio.gather(*(a.start() for a in adapters))
            await asyncio.gather(*(a.wait_assigned() for a in adapters))
            http, _ = await stack.enter_async_context(running_gateway(settings))
            yield http, settings
    finally:
        await backend.close()
