"""The land registry's bound service (no code: its binding) forwards to the agency's own REST
backend through Kafka: failure modes."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from aiohttp import ClientSession, web

from adapters.runtime.adapter import Adapter
from adapters.runtime.bindings import Bindings
from broker.contracts.catalog import Catalog
from broker.dev.ports import free_port
from broker.settings import Settings
from tests.fixtures import serving
from tests.integration.exchange_fixtures import running_gateway

pytestmark = pytest.mark.kafka
KEY = {"Authorization": "Bearer demo-dvcqg"}
PARCEL = {"parcel_id": "001-00004-1-100"}

BackendHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def land_platform(settings: Settings, backend_url: str) -> AsyncIterator[ClientSession]:
    settings = settings.replace(instance_id=f"fwd-{uuid.uuid4().hex[:8]}")
    async with AsyncExitStack() as stack:
        stack.callback(os.environ.pop, "NDXP_BINDING_TNMT_BACKEND", None)
        os.environ["NDXP_BINDING_TNMT_BACKEND"] = backend_url  # the binding's ${env:BACKEND}
        bindings = Bindings("tnmt", Catalog.load(settings.schemas_dir), settings)
        stack.push_async_callback(bindings.close)
        await bindings.sync()
        adapter = Adapter(settings, "tnmt", bindings.handlers)
        await stack.enter_async_context(adapter)
        await adapter.wait_assigned()
        http, _ = await stack.enter_async_context(running_gateway(settings))
        yield http


@asynccontextmanager
async def fake_backend(handler: BackendHandler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/api/v1/thua-dat/{ma_thua}", handler)
    async with serving(app) as url:
        yield url


async def _land(http: ClientSession) -> tuple[int, dict[str, Any]]:
    resp = await http.post("/v1/exchange/tnmt/land_parcel", json=PARCEL, headers=KEY)
    return resp.status, await resp.json(content_type=None)


async def test_backend_down_gives_provider_error_well_before_the_timeout(settings: Settings) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    async with land_platform(settings, nobody) as http:
        status, body = await _land(http)
    assert (status, body["code"]) == (502, "provider_error")
    assert "unavailable" in body["detail"] or "failed" in body["detail"]
    # 502 from the adapter, not the gateway's 504 at the service timeout: the caller was not left waiting.


async def test_slow_backend_gives_provider_error_and_waiting_work_does_not_pile_up(
    settings: Settings,
) -> None:
    in_backend = 0
    most = 0

    async def slow(_: web.Request) -> web.Response:
        nonlocal in_backend, most
        in_backend += 1
        most = max(most, in_backend)
        try:
            await asyncio.sleep(3)
            return web.json_response({})
        finally:
            in_backend -= 1

    async with fake_backend(slow) as url, land_platform(settings, url) as http:
        results = await asyncio.gather(*(_land(http) for _ in range(100)))
    # Every caller got the adapter's 502 (its binding's timeout, 2 s, or its concurrency cap), none
    # the gateway's 504 at the service timeout: waiting work did not pile up until the deadline.
    assert {(s, b["code"]) for s, b in results} == {(502, "provider_error")}
    assert most <= 64  # the forwarder's concurrency bound: the rest failed at once


async def test_backend_answering_outside_the_contract_gives_invalid_response(
    settings: Settings,
) -> None:
    async def wrong(_: web.Request) -> web.Response:
        return web.json_response({"maThua": 12, "dienTichM2": "rộng lắm"})

    async with fake_backend(wrong) as url, land_platform(settings, url) as http:
        status, body = await _land(http)
    assert (status, body["code"]) == (502, "invalid_response")
    assert {e["path"] for e in body["errors"]} >= {"/parcel_id", "/area_m2"}


async def test_backend_transient_failure_is_retried_once(settings: Settings) -> None:
    calls = 0

    async def flaky(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.json_response({}, status=503)
        owner = {"soCccd": "001090012345", "hoTen": "Hoàng Thành Hiếu"}
        return web.json_response(
            {"maThua": request.match_info["ma_thua"], "tinhThanh": "Hà Nội", "dienTichM2": 120.5,
             "mucDichSuDung": "ODT", "tenMucDichSuDung": "Đất ở tại đô thị", "chuSuDung": owner,
             "soGiayChungNhan": "CS123456", "dangTheChap": False}
        )  # fmt: skip

    async with fake_backend(flaky) as url, land_platform(settings, url) as http:
        status, body = await _land(http)
    assert status == 200, body
    assert body["land_use"] == {"code": "ODT", "name": "Đất ở tại đô thị"}
    assert calls == 2
