"""A client generated from the gateway's own /openapi.json calls a service and reads an async exchange.

What an agency does to connect: fetch the document, generate a client with
openapi-python-client, call. Against a real gateway, adapter and keeper on a
real Kafka.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from broker.settings import Settings
from tests.fixtures import generate_client
from tests.integration.exchange_fixtures import (
    EchoHandlers,
    running_adapter,
    running_gateway,
    running_keeper,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Any]:
    """Imports the generated client once the test has made it (the document comes from the gateway)."""
    loaded: dict[str, ModuleType] = {}

    def load(document: dict[str, Any], *modules: str) -> dict[str, ModuleType]:
        root = generate_client(document, tmp_path / "client")
        sys.path.insert(0, str(root))
        for name in ("ndxp_client", *modules):
            loaded[name] = importlib.import_module(name)
        return loaded

    yield load
    if str(tmp_path / "client") in sys.path:
        sys.path.remove(str(tmp_path / "client"))
    for name in [m for m in sys.modules if m == "ndxp_client" or m.startswith("ndxp_client.")]:
        del sys.modules[name]


async def test_a_generated_client_calls_a_service_and_reads_an_async_exchange(
    exchange_settings: Settings, provider: str, generated: Any
) -> None:
    handlers = EchoHandlers()
    async with (
        running_adapter(exchange_settings, provider, handlers),
        running_gateway(exchange_settings) as (http, _),
        running_keeper(exchange_settings),
    ):
        served = await http.get("/openapi.json")
        document = await served.json()
        base_url = str(served.url.origin())
        call_name = f"ndxp_client.api.{provider}.{provider}_echo"
        mods = generated(document, call_name, "ndxp_client.api.default.get_exchange", "ndxp_client.models")
        client_mod, echo, get_exchange, models = (
            mods["ndxp_client"], mods[call_name], mods["ndxp_client.api.default.get_exchange"],
            mods["ndxp_client.models"],
        )  # fmt: skip
        # The generator names the body model after the operation (provider__echo → …EchoBody).
        body_cls = next(getattr(models, n) for n in dir(models) if n.lower() == f"{provider}echobody")
        async with client_mod.AuthenticatedClient(base_url=base_url, token="key-alice") as client:
            # A synchronous call: the typed answer, parsed into the generated model.
            sync = await echo.asyncio_detailed(client=client, body=body_cls.from_dict({"msg": "generated"}))
            assert sync.status_code == 200, sync.content
            assert sync.parsed.to_dict()["msg"] == "generated"
            assert sync.headers["X-NDXP-Exchange-Id"]
            # An async exchange: 202, then its result through GET /v1/exchanges/{exchange_id}.
            accepted = await echo.asyncio_detailed(
                client=client, body=body_cls.from_dict({"msg": "later"}), prefer="respond-async"
            )
            assert accepted.status_code == 202, accepted.content
            eid = accepted.parsed.exchange_id
            assert accepted.headers["Location"] == f"/v1/exchanges/{eid}"
            for _ in range(10):  # Prefer: wait=30 returns as soon as the result exists
                done = await get_exchange.asyncio_detailed(eid, client=client, prefer="wait=30")
                assert done.status_code == 200, done.content
                if done.parsed.status != "pending":
                    break
            assert done.parsed.status == "done", done.content
            assert done.parsed.to_dict()["result"]["msg"] == "later"
            # A problem comes back as the generated Problem model.
            denied = await echo.asyncio_detailed(client=client, body=body_cls.from_dict({"msg": 5}))
            assert denied.status_code == 400
            assert denied.parsed.code == "invalid_request"
