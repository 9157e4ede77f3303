"""Running the test provider's adapter and a gateway worker in-process, on a real Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from adapters.runtime import Adapter
from broker.gateway.app import create_app
from broker.gateway.state import GATEWAY, Gateway
from broker.settings import Settings
from tests.fixtures import EchoHandlers, key_hash, write_contracts, write_registry

__all__ = [
    "EchoHandlers",
    "key_hash",
    "running_adapter",
    "running_gateway",
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
