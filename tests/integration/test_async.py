"""Async exchanges, callbacks and idempotency keys, on a real Kafka (issue 11)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from prometheus_client import generate_latest

from broker.gateway.state import Gateway
from broker.gateway.view import ENTRY_BYTES, Evicted
from broker.keeper.keeper import ExchangeKeeper
from broker.model.records import day_of
from broker.settings import Settings
from tests.fixtures import OPERATOR
from tests.integration.exchange_fixtures import (
    EchoHandlers,
    running_adapter,
    running_counter,
    running_gateway,
    running_keeper,
    settled,
    view_caught_up,
)

pytestmark = pytest.mark.kafka

ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"Authorization": "Bearer key-bob"}
SLOWPOKE = {"Authorization": "Bearer key-slowpoke"}
ASYNC = {**ALICE, "Prefer": "respond-async"}
SECRET = "s3cret-for-callbacks-0123"


class Receiver:
    """A callback receiver on loopback that fails its first ``fail_first`` deliveries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.attempts = 0
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            return web.Response(status=503)
        self.received.append((dict(request.headers), await request.read()))
        self.arrived.set()
        return web.Response(status=204)


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/ndxp/callback", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/ndxp/callback"))
    finally:
        await server.close()


def with_callback(settings: Settings, tmp_path: Path, url: str, **changes: Any) -> Settings:
    """The test registry, with a callback for alice."""
    raw = yaml.safe_load(settings.registry_path.read_text())
    for agency in raw["agencies"]:
        if agency["id"] == "alice":
            agency["callback"] = {"url": url, "secret": SECRET}
    path = tmp_path / f"registry-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return settings.replace(registry_path=path, **changes)


async def status(http: ClientSession, eid: str, headers: dict[str, str], wait: int = 0) -> tuple[int, Any]:
    extra = {"Prefer": f"wait={wait}"} if wait else {}
    resp = await http.get(f"/v1/exchanges/{eid}", headers={**headers, **extra})
    return resp.status, await resp.json(content_type=None)


async def until_status(http: ClientSession, eid: str, want: str, within_s: float = 30) -> Any:
    async with asyncio.timeout(within_s):
        while True:
            code, doc = await status(http, eid, ALICE, wait=5)
            assert code == 200, doc
            if doc["status"] == want:
                return doc
            await asyncio.sleep(0.05)


async def until_open(keeper: ExchangeKeeper, eid: str, within_s: float = 30) -> None:
    """Wait until the keeper has read the exchange's pending document."""
    async with asyncio.timeout(within_s):
        while not any(eid in opens for opens in keeper.ledger.open.values()):
            await asyncio.sleep(0.05)


async def until_closed(keeper: ExchangeKeeper, within_s: float = 60) -> None:
    """Wait until the keeper holds no open exchange: every one it read has its final document read
    back, with nothing left to finish or to call back."""
    async with asyncio.timeout(within_s):
        while keeper.ledger.counts() != (0, 0):
            await asyncio.sleep(0.05)


async def counted(
    http: ClientSession, gw: Gateway, settings: Settings, total: int, within_s: float = 30
) -> dict[str, Any]:
    """/v1/stats once it has counted ``total`` exchanges and nothing more can be counted: the counter is
    past every record in Kafka and this gateway's view has read every count it wrote (a count that is
    too high is then final and shows; no sleep "long enough for a late count")."""
    day = day_of(time.time() * 1000, settings.stats_utc_offset_hours)
    stats: dict[str, Any] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            while stats.get("total", 0) < total:
                stats = await (await http.get(f"/v1/stats?day={day}", headers=OPERATOR)).json()
                await asyncio.sleep(0.2)
    await settled(gw, settings)
    await view_caught_up(gw.stats)
    stats = await (await http.get(f"/v1/stats?day={day}", headers=OPERATOR)).json()
    return stats


async def test_async_exchange_is_accepted_then_polled_and_private_to_its_caller(
    exchange_settings: Settings, provider: str
) -> None:
    handlers = EchoHandlers()
    url = f"/v1/exchange/{provider}/echo"
    async with (
        running_adapter(exchange_settings, provider, handlers),
        running_gateway(exchange_settings) as (http, gw),
        running_keeper(exchange_settings),
        running_counter(exchange_settings),
    ):
        sync = await http.post(url, json={"msg": "one"}, headers=ALICE)
        assert sync.status == 200
        resp = await http.post(url, json={"msg": "two", "sleep_ms": 300}, headers=ASYNC)
        assert resp.status == 202, await resp.text()
        accepted = await resp.json()
        eid = accepted["exchange_id"]
        assert accepted == {"exchange_id": eid, "status": "pending"}
        assert resp.headers["Location"] == f"/v1/exchanges/{eid}"
        assert resp.headers["Preference-Applied"] == "respond-async"
        assert resp.headers["X-NDXP-Exchange-Id"] == eid
        code, doc = await status(http, eid, ALICE, wait=30)
        assert code == 200
        assert doc["status"] == "done", doc
        assert doc["http_status"] == 200
        assert doc["result"]["msg"] == "two"
        assert set(doc["result"]) == set(await sync.json()), "the async result has the sync result's shape"
        assert doc["mode"] == "async"
        for other in (BOB, {"Authorization": "Bearer key-slowpoke"}):
            code, body = await status(http, eid, other)
            assert (code, body["code"]) == (404, "not_found"), "another caller must not see the exchange"
        code, body = await status(http, str(uuid.uuid4()), ALICE)
        assert (code, body["code"]) == (404, "not_found")
        code, body = await status(http, "../../etc", ALICE)
        assert code == 404
        # A business error ends as "failed", with the provider's problem.
        resp = await http.post(url, json={"msg": "nobody", "mode": "missing"}, headers=ASYNC)
        failed = await until_status(http, (await resp.json())["exchange_id"], "failed")
        assert failed["http_status"] == 404
        assert failed["problem"]["code"] == "record_not_found"
        stats = await counted(http, gw, exchange_settings, 3)
    assert stats["total"] == 3, stats
    assert stats["by_mode"] == {"sync": 1, "async": 2}, stats
    assert stats["by_outcome"] == {"ok": 2, "business_error": 1}, stats


async def test_prefer_wait_returns_as_soon_as_the_result_exists_not_at_the_end_of_the_wait(
    exchange_settings: Settings, provider: str
) -> None:
    """Two exchanges held by their provider, each polled with ``Prefer: wait=60``: releasing one ends
    its wait with its result while the other still waits (an order, not a stopwatch)."""
    handlers = EchoHandlers()
    url = f"/v1/exchange/{provider}/echo"
    async with (
        running_adapter(exchange_settings, provider, handlers),
        running_gateway(exchange_settings) as (http, _),
        running_keeper(exchange_settings),
    ):
        ids = {}
        for msg in ("first", "second"):
            resp = await http.post(url, json={"msg": msg, "mode": "hold"}, headers=ASYNC)
            assert resp.status == 202
            ids[msg] = (await resp.json())["exchange_id"]
        async with asyncio.timeout(30):
            while handlers.held < 2:
                await asyncio.sleep(0.02)
        first = asyncio.create_task(status(http, ids["first"], ALICE, wait=60))
        second = asyncio.create_task(status(http, ids["second"], ALICE, wait=60))
        handlers.gate("first").set()
        async with asyncio.timeout(45):  # a hang guard; the wait itself would last 60 s
            code, doc = await first
        assert (code, doc["status"], doc["result"]["msg"]) == (200, "done", "first")
        assert not second.done(), "the other exchange's wait goes on: the first ended on its result"
        handlers.gate("second").set()
        async with asyncio.timeout(45):
            code, doc = await second
        assert (code, doc["status"], doc["result"]["msg"]) == (200, "done", "second")


async def test_provider_down_then_up_finishes_the_exchange_and_signs_one_callback(
    exchange_settings: Settings, provider: str, tmp_path: Path
) -> None:
    receiver = Receiver()
    async with receiving(receiver) as callback_url:
        settings = with_callback(exchange_settings, tmp_path, callback_url)
        handlers = EchoHandlers()
        async with running_gateway(settings) as (http, _), running_keeper(settings) as keeper:
            resp = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "later"}, headers=ASYNC)
            assert resp.status == 202
            eid = (await resp.json())["exchange_id"]
            await until_open(keeper, eid)  # the keeper holds it, and nobody can answer it
            code, doc = await status(http, eid, ALICE)
            assert (code, doc["status"]) == (200, "pending"), "no provider yet: the exchange waits"
            async with running_adapter(settings, provider, handlers):
                done = await until_status(http, eid, "done", within_s=60)
                async with asyncio.timeout(30):
                    await receiver.arrived.wait()
                # The keeper read back "delivered": the exchange is closed, no delivery can follow.
                await until_closed(keeper)
            metrics = generate_latest(keeper.metrics.registry).decode()
    assert done["result"]["msg"] == "later"
    assert len(receiver.received) == 1, "the callback is delivered once"
    headers, body = receiver.received[0]
    stamp = headers["X-NDXP-Timestamp"]
    expected = "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + body, "sha256").hexdigest()
    assert hmac.compare_digest(headers["X-NDXP-Signature"], expected), "signature must verify"
    assert abs(int(stamp) - time.time()) < 120
    sent = orjson.loads(body)
    assert sent["exchange_id"] == eid
    assert sent["status"] == "done"
    assert sent["result"] == done["result"]
    assert 'ndxp_callbacks_total{result="delivered"} 1.0' in metrics


@pytest.mark.parametrize(("fail_first", "attempts", "state"), [(2, 5, "delivered"), (100, 3, "failed")])
async def test_callbacks_are_retried_then_dead_lettered(
    exchange_settings: Settings, provider: str, tmp_path: Path, fail_first: int, attempts: int, state: str
) -> None:
    receiver = Receiver(fail_first=fail_first)
    async with receiving(receiver) as callback_url:
        settings = with_callback(
            exchange_settings, tmp_path, callback_url, callback_attempts=attempts, callback_backoff_s=0.2
        )
        async with (
            running_adapter(settings, provider, EchoHandlers()),
            running_gateway(settings) as (http, _),
            running_keeper(settings) as keeper,
        ):
            resp = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "cb"}, headers=ASYNC)
            eid = (await resp.json())["exchange_id"]
            async with asyncio.timeout(60):
                while True:
                    _, doc = await status(http, eid, ALICE, wait=2)
                    if doc.get("callback", {}).get("state") == state:
                        break
                    await asyncio.sleep(0.1)
            metrics = generate_latest(keeper.metrics.registry).decode()
    assert doc["status"] == "done"
    if state == "delivered":
        assert doc["callback"]["attempts"] == fail_first + 1
        assert len(receiver.received) == 1
        assert f'ndxp_callbacks_total{{result="retry"}} {float(fail_first)}' in metrics
    else:
        assert doc["callback"]["attempts"] == attempts
        assert doc["callback"]["error"] == "HTTP 5xx"  # its class only: nothing to map a network by
        assert receiver.attempts == attempts
        assert 'ndxp_callbacks_total{result="failed"} 1.0' in metrics


async def test_one_idempotency_key_through_two_workers_runs_once_and_counts_once(
    exchange_settings: Settings, provider: str
) -> None:
    handlers = EchoHandlers()
    url = f"/v1/exchange/{provider}/echo"
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    async with (
        running_adapter(exchange_settings, provider, handlers),
        running_gateway(exchange_settings, worker=0) as (http0, gw0),
        running_gateway(exchange_settings, worker=1) as (http1, _),
        running_keeper(exchange_settings),
        running_counter(exchange_settings),
    ):

        async def call(i: int) -> tuple[int, bytes, dict[str, str]]:
            http = (http0, http1)[i % 2]
            resp = await http.post(url, json={"msg": "pay", "sleep_ms": 200}, headers={**ALICE, **key})
            return resp.status, await resp.read(), dict(resp.headers)

        answers = await asyncio.gather(*(call(i) for i in range(50)))
        statuses = [a[0] for a in answers]
        assert statuses == [200] * 50, statuses
        bodies = {a[1] for a in answers}
        assert len(bodies) == 1, f"every call gets the first exchange's body: {bodies}"
        ids = {a[2]["X-NDXP-Exchange-Id"] for a in answers}
        assert len(ids) == 1, "every call names the one exchange"
        replayed = sum(a[2].get("Idempotent-Replayed") == "true" for a in answers)
        assert replayed == 49
        # Later, the same key and body: replayed; another body: 422.
        again = await http1.post(url, json={"msg": "pay", "sleep_ms": 200}, headers={**ALICE, **key})
        assert again.status == 200
        assert again.headers["Idempotent-Replayed"] == "true"
        assert await again.read() in bodies
        other = await http0.post(url, json={"msg": "refund"}, headers={**ALICE, **key})
        assert other.status == 422
        assert (await other.json())["code"] == "idempotency_key_reused"
        # Another caller may call the service: the same key text, the same body, is its own key. It
        # runs a new exchange of its own, never a replay of Alice's.
        theirs = await http0.post(url, json={"msg": "pay", "sleep_ms": 200}, headers={**SLOWPOKE, **key})
        assert theirs.status == 200, await theirs.text()
        assert "Idempotent-Replayed" not in theirs.headers
        assert theirs.headers["X-NDXP-Exchange-Id"] not in ids
        # And Slowpoke's key, on the other worker (its own rate bucket), replays Slowpoke's exchange.
        mine = await http1.post(url, json={"msg": "pay", "sleep_ms": 200}, headers={**SLOWPOKE, **key})
        assert mine.status == 200, await mine.text()
        assert mine.headers["Idempotent-Replayed"] == "true"
        assert mine.headers["X-NDXP-Exchange-Id"] == theirs.headers["X-NDXP-Exchange-Id"]
        # Bob may not call the service at all: 403 whatever his key.
        bobs = await http0.post(url, json={"msg": "pay"}, headers={**BOB, **key})
        assert bobs.status == 403
        bad = await http0.post(url, json={"msg": "pay"}, headers={**ALICE, "Idempotency-Key": "é" * 3})
        assert (bad.status, (await bad.json())["code"]) == (400, "invalid_header")
        stats = await counted(http0, gw0, exchange_settings, 5)
    assert handlers.calls["pay"] == 2, "Alice's exchange once, Slowpoke's once"
    # 2 exchanges + the 422, the 403 and the 400, each its own (failed) exchange; replays count nothing.
    assert stats["total"] == 5, stats
    assert stats["by_outcome"] == {
        "ok": 2,
        "idempotency_key_reused": 1,
        "access_denied": 1,
        "invalid_header": 1,
    }, stats


async def test_async_idempotent_submit_returns_the_same_exchange(
    exchange_settings: Settings, provider: str
) -> None:
    url = f"/v1/exchange/{provider}/echo"
    key = {"Idempotency-Key": "submit-1"}
    async with (
        running_adapter(exchange_settings, provider, EchoHandlers()),
        running_gateway(exchange_settings) as (http, _),
        running_keeper(exchange_settings),
    ):
        first = await http.post(url, json={"msg": "x"}, headers={**ASYNC, **key})
        second = await http.post(url, json={"msg": "x"}, headers={**ASYNC, **key})
        assert (first.status, second.status) == (202, 202)
        eid = (await first.json())["exchange_id"]
        assert second.headers["Location"] == f"/v1/exchanges/{eid}"
        assert second.headers["Idempotent-Replayed"] == "true"
        await until_status(http, eid, "done")
        # A sync call with the key of a finished async exchange replays its result.
        sync = await http.post(url, json={"msg": "x"}, headers={**ALICE, **key})
        assert sync.status == 200
        assert (await sync.json())["msg"] == "x"


async def test_results_survive_a_gateway_restart_and_are_counted_once(
    exchange_settings: Settings, provider: str
) -> None:
    handlers = EchoHandlers()
    url = f"/v1/exchange/{provider}/echo"
    async with running_keeper(exchange_settings), running_counter(exchange_settings):
        async with running_gateway(exchange_settings, worker=0) as (http, _):
            ids = []
            for i in range(5):
                resp = await http.post(url, json={"msg": f"r{i}"}, headers=ASYNC)
                assert resp.status == 202
                ids.append((await resp.json())["exchange_id"])
        # The gateway is gone; the provider answers meanwhile; a new worker reads the results.
        async with running_adapter(exchange_settings, provider, handlers):
            async with asyncio.timeout(60):  # the provider answers while no gateway runs
                while len(handlers.calls) < 5:
                    await asyncio.sleep(0.05)
            async with running_gateway(exchange_settings, worker=3) as (http, gw):
                for i, eid in enumerate(ids):
                    doc = await until_status(http, eid, "done", within_s=60)
                    assert doc["result"]["msg"] == f"r{i}"
                stats = await counted(http, gw, exchange_settings, 5)
    assert stats["total"] == 5, stats
    assert stats["by_mode"] == {"async": 5}, stats
    assert sum(handlers.calls.values()) == 5


async def test_results_beyond_the_memory_budget_are_read_back_from_kafka(
    exchange_settings: Settings, provider: str
) -> None:
    url = f"/v1/exchange/{provider}/echo"
    async with (
        running_adapter(exchange_settings, provider, EchoHandlers()),
        running_gateway(exchange_settings) as (http, gw),
        running_keeper(exchange_settings),
    ):
        # Room for the five index entries and no more: only the newest final document is held.
        gw.exchanges.budget = 5 * ENTRY_BYTES + 1
        ids = []
        for i in range(5):
            resp = await http.post(url, json={"msg": f"m{i}"}, headers=ASYNC)
            ids.append((await resp.json())["exchange_id"])
        for eid in ids:
            await until_status(http, eid, "done")
        held = [eid for eid in ids if not isinstance(gw.exchanges.docs[eid], Evicted)]
        assert len(held) == 1, "all but the newest final document are evicted"
        for i, eid in enumerate(ids):
            code, doc = await status(http, eid, ALICE)
            assert (code, doc["status"], doc["result"]["msg"]) == (200, "done", f"m{i}")
        code, _ = await status(http, ids[0], BOB)
        assert code == 404, "read back or not, another caller gets nothing"


async def test_an_async_exchange_nobody_answers_expires_and_is_counted_once(
    exchange_settings: Settings, provider: str
) -> None:
    async with (
        running_gateway(exchange_settings) as (http, gw),
        running_keeper(exchange_settings),
        running_counter(exchange_settings),
    ):
        resp = await http.post(f"/v1/exchange/{provider}/slow", json={"msg": "nobody"}, headers=ASYNC)
        assert resp.status == 202  # no adapter runs: the provider never answers
        eid = (await resp.json())["exchange_id"]
        doc = await until_status(http, eid, "expired", within_s=60)
        stats = await counted(http, gw, exchange_settings, 1)
    assert (doc["http_status"], doc["problem"]["code"]) == (504, "timeout"), doc
    assert doc["problem"]["exchange_id"] == eid
    assert stats["total"] == 1, stats
    assert stats["by_outcome"] == {"timeout": 1}, stats
    assert stats["by_mode"] == {"async": 1}, stats


async def test_a_sync_call_with_the_key_of_an_async_exchange_in_flight_gets_409_then_its_result(
    exchange_settings: Settings, provider: str
) -> None:
    handlers = EchoHandlers()
    url = f"/v1/exchange/{provider}/echo"
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    body = {"msg": "held", "mode": "hold"}
    async with (
        running_adapter(exchange_settings, provider, handlers),
        running_gateway(exchange_settings) as (http, _),
        running_keeper(exchange_settings),
    ):
        first = await http.post(url, json=body, headers={**ASYNC, **key})
        assert first.status == 202
        eid = (await first.json())["exchange_id"]
        async with asyncio.timeout(30):
            while handlers.held < 1:
                await asyncio.sleep(0.02)
        # The async exchange may take its whole TTL: a sync caller is told to come back, not kept waiting.
        busy = await http.post(url, json=body, headers={**ALICE, **key})
        problem = await busy.json()
        assert (busy.status, problem["code"]) == (409, "idempotency_key_in_flight"), problem
        assert busy.headers["Retry-After"] == "1"
        assert eid in problem["detail"], "it names the exchange to look at"
        handlers.release.set()
        await until_status(http, eid, "done")
        replay = await http.post(url, json=body, headers={**ALICE, **key})
        assert replay.status == 200
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.headers["X-NDXP-Exchange-Id"] == eid
    assert handlers.calls["held"] == 1, "processed once"


async def test_keepers_that_lose_partitions_and_stop_with_exchanges_open_leave_nothing_unfinished(
    exchange_settings: Settings, provider: str
) -> None:
    """Keeper A holds open exchanges; keeper B joins (A loses partitions to B) and A stops (B takes
    them all); the provider answers only then. Every exchange finishes once and is counted once."""
    handlers = EchoHandlers()
    url = f"/v1/exchange/{provider}/echo"
    other_instance = exchange_settings.replace(instance_id=f"{exchange_settings.instance_id}-b")
    async with (
        running_gateway(exchange_settings) as (http, gw),
        running_counter(exchange_settings),
        running_keeper(exchange_settings) as first,
    ):
        ids = []
        for i in range(8):
            resp = await http.post(url, json={"msg": f"k{i}"}, headers=ASYNC)
            assert resp.status == 202
            ids.append((await resp.json())["exchange_id"])
        for eid in ids:
            await until_open(first, eid)
        async with running_keeper(other_instance) as second:  # its own transactional id
            async with asyncio.timeout(60):  # the group rebalanced: both hold partitions
                while not (second.ledger.open and len(first.ledger.open) < 8):
                    await asyncio.sleep(0.05)
            await first.stop()  # its partitions, with exchanges open, go to the second
            for eid in ids:
                await until_open(second, eid)
            async with running_adapter(exchange_settings, provider, handlers):
                docs = [await until_status(http, eid, "done", within_s=60) for eid in ids]
            stats = await counted(http, gw, exchange_settings, 8)
    assert [d["result"]["msg"] for d in docs] == [f"k{i}" for i in range(8)]
    assert all(handlers.calls[f"k{i}"] == 1 for i in range(8)), handlers.calls
    assert stats["total"] == 8, stats
    assert stats["by_mode"] == {"async": 8}, stats


@pytest.mark.parametrize(
    ("path_of", "error"),
    [
        (lambda url: url, "refused: a callback URL is https"),
        (lambda url: url.replace("http://", "https://"), "refused: the callback's address is not public"),
        (
            lambda url: url.replace("http://127.0.0.1", "https://localhost"),
            "refused: the callback's address is not public",
        ),
    ],
)
async def test_a_callback_to_the_platforms_own_network_is_refused_and_says_only_so(
    exchange_settings: Settings, provider: str, tmp_path: Path, path_of: Any, error: str
) -> None:
    receiver = Receiver()
    async with receiving(receiver) as callback_url:
        settings = with_callback(
            exchange_settings,
            tmp_path,
            path_of(callback_url),
            callback_allow_private=False,
            callback_backoff_s=0.2,
        )
        async with (
            running_adapter(settings, provider, EchoHandlers()),
            running_gateway(settings) as (http, _),
            running_keeper(settings),
        ):
            resp = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "cb"}, headers=ASYNC)
            eid = (await resp.json())["exchange_id"]
            async with asyncio.timeout(60):
                while True:
                    _, doc = await status(http, eid, ALICE, wait=2)
                    if doc.get("callback", {}).get("state") == "failed":
                        break
                    await asyncio.sleep(0.1)
    assert doc["callback"]["error"] == error  # no host, no port, no OS text
    assert receiver.attempts == 0  # nothing reached the loopback service


async def test_a_client_holds_a_bounded_number_of_open_stored_exchanges(
    exchange_settings: Settings, provider: str, tmp_path: Path
) -> None:
    raw = yaml.safe_load(exchange_settings.registry_path.read_text())
    next(a for a in raw["agencies"] if a["id"] == "alice")["max_open_stored"] = 3
    path = tmp_path / "capped.yaml"
    path.write_text(yaml.safe_dump(raw))
    settings = exchange_settings.replace(registry_path=path)
    handlers = EchoHandlers()
    async with running_gateway(settings) as (http, gw):  # no adapter yet: accepted exchanges stay open
        accepted = []
        for i in range(3):
            resp = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": f"m{i}"}, headers=ASYNC)
            assert resp.status == 202, await resp.text()
            accepted.append((await resp.json())["exchange_id"])
        refused = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "one more"}, headers=ASYNC)
        assert refused.status == 429
        assert (await refused.json())["code"] == "rate_limited"
        other = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "s"},
                                headers={**SLOWPOKE, "Prefer": "respond-async"})  # fmt: skip
        assert other.status == 202  # another client's allowance is its own
        async with running_adapter(settings, provider, handlers), running_keeper(settings):
            for eid in accepted:
                await until_status(http, eid, "done")
            async with asyncio.timeout(10):
                while gw.exchanges.open_for("alice"):
                    await asyncio.sleep(0.05)
            again = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "later"}, headers=ASYNC)
            assert again.status == 202  # finished ones free their place


async def test_a_full_index_refuses_the_heaviest_client_only(
    exchange_settings: Settings, provider: str
) -> None:
    """The stored-exchange index every worker holds is bounded as a whole: near its budget, a client
    holding more than an even share is refused (429), the others still store theirs."""
    async with running_gateway(exchange_settings) as (http, gw):  # no adapter: they stay open
        gw.exchanges.budget = 12 * ENTRY_BYTES  # room for ten entries before admission tightens
        codes = []
        for i in range(14):
            resp = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": f"m{i}"}, headers=ASYNC)
            codes.append(resp.status)
        refused = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "more"}, headers=ASYNC)
        other = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "s"},
                                headers={**SLOWPOKE, "Prefer": "respond-async"})  # fmt: skip
        problem = await refused.json()
    assert codes[:10] == [202] * 10
    assert 429 in codes
    assert (refused.status, problem["code"]) == (429, "rate_limited")
    assert "even share" in problem["detail"]
    assert other.status == 202, "another client still stores its exchange"


async def test_status_reads_and_replays_are_charged_and_long_polls_are_bounded(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings.replace(max_long_polls=2)
    async with running_gateway(settings) as (http, _):  # no adapter: the exchanges stay pending
        resp = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "p"}, headers=ASYNC)
        eid = (await resp.json())["exchange_id"]
        polls = [asyncio.create_task(status(http, eid, ALICE, wait=3)) for _ in range(3)]
        answers = sorted(code for code, _ in await asyncio.gather(*polls))
        assert answers == [200, 200, 429]  # the third wait is refused, the others answered
        # slowpoke's rate (0.1/s, a burst of 1): its exchange takes the token, its read is refused.
        sp = {**SLOWPOKE, "Prefer": "respond-async"}
        accepted = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "s"}, headers=sp)
        assert accepted.status == 202
        code, doc = await status(http, (await accepted.json())["exchange_id"], SLOWPOKE)
        assert (code, doc["code"]) == (429, "rate_limited")
