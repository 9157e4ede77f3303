"""The demo platform in one process: the agencies' own backends, every agency's adapter, a gateway."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from adapters.demo import land_backend, soap_backend
from adapters.demo.serve import build_adapters
from adapters.runtime.bindings import Bindings
from broker.contracts.catalog import Catalog
from broker.metrics import AdapterMetrics
from broker.settings import Settings
from tests.integration.exchange_fixtures import running_gateway


@asynccontextmanager
async def agency_backends(settings: Settings) -> AsyncIterator[None]:
    """The land registry's REST and social insurance's SOAP backends, in-process, and the references
    their bindings name (``NDXP_BINDING_<PROVIDER>_BACKEND``) set for as long as they run."""
    servers = {"TNMT": TestServer(land_backend.create_backend(settings), host="127.0.0.1"),
               "BHXH": TestServer(soap_backend.create_backend(settings), host="127.0.0.1")}  # fmt: skip
    before = {who: os.environ.get(f"NDXP_BINDING_{who}_BACKEND") for who in servers}
    try:
        for who, server in servers.items():
            await server.start_server()
            os.environ[f"NDXP_BINDING_{who}_BACKEND"] = str(server.make_url("")).rstrip("/")
        yield
    finally:
        for who, server in servers.items():
            await server.close()
            if before[who] is None:
                os.environ.pop(f"NDXP_BINDING_{who}_BACKEND", None)
            else:
                os.environ[f"NDXP_BINDING_{who}_BACKEND"] = before[who] or ""


@asynccontextmanager
async def demo_platform(settings: Settings) -> AsyncIterator[tuple[ClientSession, Settings]]:
    """Yields an HTTP session on a gateway in front of every demo agency."""
    run = uuid.uuid4().hex[:8]
    settings = settings.replace(
        instance_id=f"demo-{run}",
        tx_topic=f"{settings.tx_topic}.demo-{run}",
        stats_topic=f"{settings.stats_topic}.demo-{run}",
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(agency_backends(settings))
        catalog = Catalog.load(settings.schemas_dir)
        providers = catalog.providers()
        bound = {p: Bindings(p, catalog, settings) for p in providers}
        for bindings in bound.values():
            stack.push_async_callback(bindings.close)
            await bindings.sync()
        adapters = build_adapters(
            settings, providers, AdapterMetrics(CollectorRegistry()), stack, catalog=catalog, bound=bound
        )
        for adapter in adapters:
            stack.push_async_callback(adapter.stop)
        await asyncio.gather(*(a.start() for a in adapters))
        await asyncio.gather(*(a.wait_assigned() for a in adapters))
        http, _ = await stack.enter_async_context(running_gateway(settings))
        yield http, settings
