"""The exchange path end to end: gateway → Kafka → adapter → Kafka → gateway."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, ClientSession

from broker.settings import Settings
from tests.fixtures import OPERATOR, sample
from tests.integration.exchange_fixtures import EchoHandlers, running_adapter, running_gateway

pytestmark = pytest.mark.kafka

ALICE = {"Authorization": "Bearer key-alice"}


async def problem(resp: ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json(content_type=None)
    assert body["code"] == code
    assert body["status"] == status
    assert body["exchange_id"] == resp.headers["X-NDXP-Exchange-Id"]
    assert body["detail"]
    return body


async def test_ok_exchange_returns_the_typed_answer_and_echoes_request_id(
    exchange_settings: Settings, provider: str
) -> None:
    handlers = EchoHandlers()
    async with (
        running_adapter(exchange_settings, provider, handlers),
        running_gateway(exchange_settings) as (http, gw),
    ):
        resp = await http.post(
            f"/v1/exchange/{provider}/echo",
            data=b'{"msg": "xin chao"}',
            headers={**ALICE, "X-Request-Id": "req-001", "X-NDXP-Purpose": "test"},
        )
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "req-001"  # echoed: the caller's label
        assert uuid.UUID(resp.headers["X-NDXP-Exchange-Id"]).version == 7  # the gateway's own id
        assert await resp.json() == {"msg": "xin chao", "via": gw.replies.topic}
        metrics = await (await http.get("/metrics", headers=OPERATOR)).text()
    labels = f'client="alice",outcome="ok",provider="{provider}",service="echo"'
    assert f"ndxp_exchanges_total{{{labels}}} 1.0" in metrics


async def test_every_error_code_comes_from_a_real_request(exchange_settings: Settings, provider: str) -> None:
    handlers = EchoHandlers()
    url = f"/v1/exchange/{provider}/echo"
    async with (
        running_adapter(exchange_settings, provider, handlers),
        running_gateway(exchange_settings) as (http, _),
    ):
        await problem(await http.post(url, json={"msg": "a"}), 401, "unauthorized")
        await problem(
            await http.post(url, json={"msg": "a"}, headers={"Authorization": "Bearer nope"}),
            401,
            "unauthorized",
        )
        await problem(
            await http.post(url, json={"msg": "a"}, headers={"Authorization": "Bearer key-bob"}),
            403,
            "access_denied",
        )
        await problem(
            await http.post(f"/v1/exchange/{provider}/nothing", json={}, headers=ALICE),
            404,
            "unknown_service",
        )
        body = await problem(
            await http.post(url, json={"msg": 5, "extra": 1}, headers=ALICE), 400, "invalid_request"
        )
        assert {e["path"] for e in body["errors"]} >= {"/msg", "/"}
        await problem(await http.post(url, data=b"{not json", headers=ALICE), 400, "invalid_request")
        big = orjson.dumps({"msg": "x" * (exchange_settings.max_body_bytes + 10)})
        await problem(await http.post(url, data=big, headers=ALICE), 413, "payload_too_large")
        await problem(
            await http.post(url, json={"msg": "b", "mode": "crash"}, headers=ALICE),
            502,
            "provider_error",
        )
        body = await problem(
            await http.post(url, json={"msg": "c", "mode": "bad"}, headers=ALICE),
            502,
            "invalid_response",
        )
        assert body["errors"][0]["path"] == "/msg"
        await problem(
            await http.post(f"/v1/exchange/{provider}/slow", json={"msg": "d"}, headers=ALICE),
            504,
            "timeout",
        )
        # The provider's own business error passes through with its status and body.
        body = await problem(
            await http.post(url, json={"msg": "e", "mode": "missing"}, headers=ALICE),
            404,
            "record_not_found",
        )
        assert body["detail"] == "no record e"
        # Rate limit: slowpoke may make 1 request per 10 s.
        slow_key = {"Authorization": "Bearer key-slowpoke"}
        first = await http.post(url, json={"msg": "f"}, headers=slow_key)
        assert first.status == 200
        limited = await http.post(url, json={"msg": "g"}, headers=slow_key)
        await problem(limited, 429, "rate_limited")
        # The next token comes in 10 s (0.1/s), less the moments since the first call.
        assert 8 <= int(limited.headers["Retry-After"]) <= 10, limited.headers["Retry-After"]
        assert handlers.calls["g"] == 0  # rejected before Kafka
        await problem(await http.get("/v1/nowhere"), 404, "not_found")
        await problem(
            await http.post(url, json={"msg": "h"}, headers={**ALICE, "X-Request-Id": "bad id!"}),
            400,
            "invalid_request",
        )

    # overloaded: a gateway allowing one exchange in flight
    tight = exchange_settings.replace(max_in_flight=1)
    async with (
        running_adapter(tight, provider, handlers),
        running_gateway(tight, worker=1) as (http, tight_gw),
    ):
        slow = asyncio.create_task(http.post(url, json={"msg": "i", "sleep_ms": 1000}, headers=ALICE))
        async with asyncio.timeout(10):  # until the slow exchange holds the one slot
            while tight_gw.limits.total_in_flight < 1:
                await asyncio.sleep(0.01)
        over = await http.post(url, json={"msg": "j"}, headers=ALICE)
        await problem(over, 503, "overloaded")
        assert over.headers["Retry-After"]
        assert (await slow).status == 200


async def test_slow_handler_gives_504_and_its_late_reply_is_dropped_and_counted(
    exchange_settings: Settings, provider: str
) -> None:
    handlers = EchoHandlers()
    async with (
        running_adapter(exchange_settings, provider, handlers),
        running_gateway(exchange_settings) as (http, gw),
    ):
        resp = await http.post(f"/v1/exchange/{provider}/slow", json={"msg": "z"}, headers=ALICE)
        await problem(resp, 504, "timeout")
        async with asyncio.timeout(15):
            while sample(gw.metrics.registry, "ndxp_late_replies_total") < 1:
                await asyncio.sleep(0.1)
        assert handlers.calls["z"] == 1
        assert gw.replies.in_flight == 0


async def test_metaservices_describe_the_catalog_and_the_caller(
    exchange_settings: Settings, provider: str
) -> None:
    async with running_gateway(exchange_settings) as (http, _gw):
        agencies = await (await http.get("/v1/agencies")).json()
        assert {"id": "alice", "code": "T.A", "name": "Alice"} in agencies["agencies"]
        services = (await (await http.get("/v1/services")).json())["services"]
        assert {s["service"]: s["effects"] for s in services} == {
            "echo": "read",
            "slow": "read",
            "store": "write",
        }
        echo = next(s for s in services if s["service"] == "echo")
        assert set(echo) >= {
            "provider", "service", "title", "description", "mode", "timeout_ms", "effects",
            "request", "response", "examples",
        }  # fmt: skip
        one = await http.get(f"/v1/services/{provider}/echo")
        assert (await one.json())["timeout_ms"] == 5000
        await problem(await http.get(f"/v1/services/{provider}/none"), 404, "unknown_service")
        allowed = await (await http.get("/v1/allowed", headers=ALICE)).json()
        assert allowed["services"] == [f"{provider}/echo", f"{provider}/slow", f"{provider}/store"]
        await problem(await http.get("/v1/allowed"), 401, "unauthorized")
        doc = await (await http.get("/openapi.json")).json()
        assert doc["openapi"].startswith("3.1")
        op = doc["paths"][f"/v1/exchange/{provider}/echo"]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"]["required"] == ["msg"]
        assert (await http.get("/healthz")).status == 200
        ready = await http.get("/readyz")
        assert await ready.json() == {"status": "ready"}  # nothing that names the host
        assert "ndxp_gateway_in_flight" in await (await http.get("/metrics", headers=OPERATOR)).text()


async def _call(http: ClientSession, url: str, msg: str) -> tuple[int, Any]:
    resp = await http.post(url, json={"msg": msg}, headers=ALICE)
    return resp.status, await resp.json(content_type=None)


async def test_a_reused_request_id_never_gives_one_caller_another_callers_answer(
    exchange_settings: Settings, provider: str
) -> None:
    """Two callers (and one caller twice) under the same X-Request-Id: each gets its own answer."""
    handlers = EchoHandlers()
    url = f"/v1/exchange/{provider}/echo"
    same = {**ALICE, "X-Request-Id": "shared-id-1"}
    async with (
        running_adapter(exchange_settings, provider, handlers),
        running_gateway(exchange_settings) as (http, _),
    ):
        first = await http.post(url, json={"msg": "hanoi's citizen"}, headers=same)
        # Concurrent and sequential reuse: both are new exchanges, processed and answered on their own.
        again, concurrent = await asyncio.gather(
            http.post(url, json={"msg": "danang's citizen", "sleep_ms": 200}, headers=same),
            http.post(url, json={"msg": "other", "sleep_ms": 200}, headers=same),
        )
        bodies = [await r.json() for r in (first, again, concurrent)]
        ids = {r.headers["X-NDXP-Exchange-Id"] for r in (first, again, concurrent)}
    assert [r.status for r in (first, again, concurrent)] == [200, 200, 200]
    assert [b["msg"] for b in bodies] == ["hanoi's citizen", "danang's citizen", "other"]
    assert len(ids) == 3, "every exchange gets its own id, whatever X-Request-Id says"
    assert handlers.calls == {"hanoi's citizen": 1, "danang's citizen": 1, "other": 1}


async def test_a_worker_that_stops_removes_its_reply_topic(exchange_settings: Settings) -> None:
    from broker.kafka import admin_client

    async with running_gateway(exchange_settings) as (_, gw):
        topic = gw.replies.topic
        admin = admin_client(exchange_settings)
        await admin.start()
        try:
            assert topic in await admin.list_topics()
        finally:
            await admin.close()
    admin = admin_client(exchange_settings)
    await admin.start()
    try:
        async with asyncio.timeout(20):
            while topic in await admin.list_topics():
                await asyncio.sleep(0.2)
    finally:
        await admin.close()
