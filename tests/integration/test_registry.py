"""The live registry and its management API, on a real Kafka, through the admin API only."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from broker.admin.cli import export_registry, import_file
from broker.contracts.live import Entry
from broker.kafka import Producer, Topics, make_producer
from broker.kafka.registry import RegistryFollower
from broker.settings import Settings
from tests.integration.exchange_fixtures import EchoHandlers, running_adapter, running_admin, running_gateway
from tests.integration.test_exchange_processes import gateway_process

pytestmark = pytest.mark.kafka
OPS = {"Authorization": "Bearer key-ops"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _json(resp: aiohttp.ClientResponse) -> Any:
    return orjson.loads(await resp.read())


async def _until(check: Any, within_s: float = 10.0) -> float:
    """Seconds until ``await check()`` is true (fails past ``within_s``)."""
    started = time.perf_counter()
    async with asyncio.timeout(within_s):
        while not await check():
            await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def test_an_agency_onboarded_by_the_admin_api_calls_through_two_workers_and_is_revoked_in_a_second(
    exchange_settings: Settings, provider: str, tmp_path: Path
) -> None:
    settings = exchange_settings
    url = f"/v1/exchange/{provider}/echo"
    async with running_admin(settings) as (admin, _), running_adapter(settings, provider, EchoHandlers()):
        with gateway_process(settings, 2, tmp_path / "gw.log") as (base, _proc):
            connector = aiohttp.TCPConnector(force_close=True)  # new connections: both workers answer
            async with aiohttp.ClientSession(base, connector=connector) as http:

                async def statuses(key: str, n: int = 8) -> set[int]:
                    out = set()
                    for _ in range(n):
                        async with http.post(url, json={"msg": "hi"}, headers=bearer(key)) as resp:
                            await resp.read()
                            out.add(resp.status)
                    return out

                resp = await admin.post(
                    "/admin/v1/agencies", json={"id": "carol", "code": "T.C", "name": "Carol"}, headers=OPS
                )
                assert resp.status == 201, await resp.text()
                issued = await _json(await admin.post("/admin/v1/agencies/carol/keys", json={}, headers=OPS))
                key = issued["key"]
                became_known = await _until(lambda: _all(statuses(key), {403}))  # known, no right yet
                ask = await admin.post(
                    "/admin/v1/access-requests",
                    headers=bearer(key),
                    json={"client": "carol", "provider": provider, "service": "echo", "purpose": "tests"},
                )
                assert ask.status == 201, await ask.text()
                request_id = (await _json(ask))["id"]
                by_bob = await admin.post(
                    f"/admin/v1/access-requests/{request_id}/approve", headers=bearer("key-bob")
                )
                assert by_bob.status == 404  # not bob's to see, let alone decide
                by_carol = await admin.post(
                    f"/admin/v1/access-requests/{request_id}/approve", headers=bearer(key)
                )
                assert by_carol.status == 403  # the client cannot approve its own request
                approved = await admin.post(
                    f"/admin/v1/access-requests/{request_id}/approve", headers=bearer("key-provider")
                )
                assert approved.status == 200, await approved.text()
                assert (await _json(approved))["state"] == "approved"
                granted = await _until(lambda: _all(statuses(key), {200}))
                revoked = await admin.delete(f"/admin/v1/agencies/carol/keys/{issued['key_id']}", headers=OPS)
                assert revoked.status == 204
                refused = await _until(lambda: _all(statuses(key), {401}))
            changes = await _json(await admin.get("/admin/v1/changes", headers=OPS))
    actions = [(c["actor"], c["action"], c["outcome"]) for c in changes["changes"]]
    assert ("ops", "agency.create", "applied") in actions
    assert ("carol", "access.request", "applied") in actions
    assert ("carol", "access.approve", "refused") in actions  # the attempt is on record
    assert (provider, "access.approve", "applied") in actions
    assert ("ops", "key.revoke", "applied") in actions
    print(f"key known everywhere after {became_known:.3f}s, right {granted:.3f}s, revocation {refused:.3f}s")
    # Each figure includes 8 calls through new connections; the benchmark measures the apply latency alone.
    assert max(became_known, granted, refused) < 5


async def _all(statuses: Any, wanted: set[int]) -> bool:
    return bool(await statuses == wanted)


async def _sent(producer: Producer, topic: str, value: bytes, *, key: bytes) -> None:
    await (await producer.send(topic, value, key=key))


async def test_a_rejected_request_stays_refused_and_a_right_revoked_by_the_provider_is_gone(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings
    async with (
        running_admin(settings) as (admin, _),
        running_adapter(settings, provider, EchoHandlers()),
        running_gateway(settings) as (http, gw),
    ):
        ask = await admin.post(
            "/admin/v1/access-requests",
            headers=bearer("key-bob"),
            json={"client": "bob", "provider": provider, "service": "echo", "purpose": "tests"},
        )
        rid = (await _json(ask))["id"]
        rejected = await admin.post(f"/admin/v1/access-requests/{rid}/reject", headers=bearer("key-provider"))
        assert (await _json(rejected))["state"] == "rejected"
        again = await admin.post(f"/admin/v1/access-requests/{rid}/approve", headers=bearer("key-provider"))
        assert again.status == 409  # decided once
        await gw.follower.caught_up()
        call = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "x"}, headers=bearer("key-bob"))
        assert call.status == 403
        rights = await _json(await admin.get("/admin/v1/rights", headers=bearer("key-provider")))
        alice = next(r for r in rights["rights"] if r["client"] == "alice" and r["kind"] == "call")
        by_alice = await admin.delete(f"/admin/v1/rights/{alice['id']}", headers=bearer("key-alice"))
        assert by_alice.status == 403  # a client cannot revoke (or grant itself) a right
        gone = await admin.delete(f"/admin/v1/rights/{alice['id']}", headers=bearer("key-provider"))
        assert gone.status == 204
        await gw.follower.caught_up()
        call = await http.post(
            f"/v1/exchange/{provider}/echo", json={"msg": "x"}, headers=bearer("key-alice")
        )
        assert call.status == 403


def _echo_v(version: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": f"Echo {version}",
        "version": version,
        "timeout_ms": 5000,
        "request": {
            "type": "object",
            "required": ["msg"],
            "properties": {
                "msg": {"type": "string"},
                "sleep_ms": {"type": "integer"},
                "mode": {"type": "string"},
                "reply": {},
                **extra.pop("request_props", {}),
            },
            **extra.pop("request", {}),
        },
        "response": {"type": "object"},
        "examples": [{"msg": "hi", "reason": "r", "age": 1}],
        **extra,
    }


async def test_versions_are_served_side_by_side_and_a_breaking_minor_is_refused_naming_the_path(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings
    prov = bearer("key-provider")
    handlers = EchoHandlers()
    async with (
        running_admin(settings) as (admin, _),
        running_adapter(settings, provider, handlers),
        running_gateway(settings) as (http, gw),
    ):
        put = f"/admin/v1/services/{provider}/echo"
        by_alice = await admin.put(put, json=_echo_v("2"), headers=bearer("key-alice"))
        assert by_alice.status == 403
        v2 = await admin.put(
            put,
            json=_echo_v(
                "2", request_props={"reason": {"type": "string"}}, request={"required": ["msg", "reason"]}
            ),
            headers=prov,
        )
        assert v2.status == 201, await v2.text()
        breaking = await admin.put(
            put,
            json=_echo_v(
                "2.1",
                request_props={"reason": {"type": "string"}, "age": {"type": "integer"}},
                request={"required": ["msg", "reason", "age"]},
            ),
            headers=prov,
        )
        assert breaking.status == 400
        problem = await _json(breaking)
        assert "request /age: newly required" in problem["detail"], problem
        v1 = orjson.loads((settings.schemas_dir / provider / "echo.json").read_bytes())
        deprecate_v1 = await admin.put(
            put, json={**v1, "version": "1.1", "state": "deprecated", "sunset": "2027-06-30"}, headers=prov
        )
        assert deprecate_v1.status == 200, await deprecate_v1.text()
        await gw.follower.caught_up()
        default = await http.post(
            f"/v1/exchange/{provider}/echo", json={"msg": "a", "reason": "r"}, headers=bearer("key-alice")
        )
        assert default.status == 200, await default.text()
        assert default.headers["X-NDXP-Service-Version"] == "2"
        pinned = await http.post(
            f"/v1/exchange/{provider}/echo/v1", json={"msg": "a"}, headers=bearer("key-alice")
        )
        assert pinned.status == 200, await pinned.text()
        assert pinned.headers["X-NDXP-Service-Version"] == "1.1"
        assert pinned.headers["Deprecation"] == "true"
        assert pinned.headers["Sunset"] == "Wed, 30 Jun 2027 00:00:00 GMT"
        v2_without_reason = await http.post(
            f"/v1/exchange/{provider}/echo", json={"msg": "a"}, headers=bearer("key-alice")
        )
        assert v2_without_reason.status == 400  # v2's contract, not v1's
        none = await http.post(
            f"/v1/exchange/{provider}/echo/v9", json={"msg": "a"}, headers=bearer("key-alice")
        )
        assert none.status == 404
        listed = await _json(await http.get("/v1/services"))
        versions = {
            (s["service"], s["version"], s["state"]) for s in listed["services"] if s["provider"] == provider
        }
        assert {("echo", "1.1", "deprecated"), ("echo", "2", "active")} <= versions
    assert handlers.versions["2"] == 1  # the adapter is told which version it serves
    assert handlers.versions["1.1"] == 1


async def test_two_admins_patching_one_agency_at_once_one_wins_and_the_other_gets_409(
    exchange_settings: Settings,
) -> None:
    settings = exchange_settings
    async with running_admin(settings) as (one, _), running_admin(settings) as (two, _):
        got = await one.get("/admin/v1/agencies/bob", headers=OPS)
        etag = got.headers["ETag"]
        answers = await asyncio.gather(
            one.patch("/admin/v1/agencies/bob", json={"rate_limit": 10}, headers={**OPS, "If-Match": etag}),
            two.patch("/admin/v1/agencies/bob", json={"rate_limit": 20}, headers={**OPS, "If-Match": etag}),
        )
        statuses = sorted(a.status for a in answers)
        assert statuses == [200, 409], [await a.text() for a in answers]
        winner = next(a for a in answers if a.status == 200)
        after = await _json(await two.get("/admin/v1/agencies/bob", headers=OPS))
        assert after["rate_limit"] == (await _json(winner))["rate_limit"]
        conflict = await _json(next(a for a in answers if a.status == 409))
        assert conflict["code"] == "conflict"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/admin/v1/agencies", {"code": "X"}, "agency.id"),
        ("/admin/v1/agencies", {"id": "dave", "rate_limit": -1}, "agency.rate_limit"),
        ("/admin/v1/agencies", {"id": "dave", "colour": "red"}, "agency.colour"),
        ("/admin/v1/agencies/bob/keys", {"expires": "2001-01-01"}, "expires"),
        (
            "/admin/v1/access-requests",
            {"client": "bob", "provider": "PROV", "service": "nothing", "purpose": "x"},
            "names unknown service",
        ),
        (
            "/admin/v1/services/PROV/bad",
            {"title": "t", "timeout_ms": 10, "request": {"type": 12}, "response": {}},
            "the request schema does not compile",
        ),
        (
            "/admin/v1/services/PROV/bound",
            {
                "title": "t",
                "timeout_ms": 10,
                "request": {},
                "response": {},
                "binding": {
                    "rest": {"method": "GET", "url": "https://x.example", "colour": 1},
                    "response": "@",
                    "example": {},
                },
            },
            "binding/rest",
        ),
    ],
)
async def test_a_bad_document_gets_400_naming_the_field_and_changes_nothing(
    exchange_settings: Settings, provider: str, path: str, body: dict[str, Any], field: str
) -> None:
    settings = exchange_settings
    path = path.replace("PROV", provider)
    body = orjson.loads(orjson.dumps(body).replace(b"PROV", provider.encode()))
    async with running_admin(settings) as (admin, adm):
        before = adm.live.export()
        key = OPS if "access" not in path else bearer("key-bob")
        resp = await admin.request("PUT" if "/services/" in path else "POST", path, json=body, headers=key)
        problem = await _json(resp)
        assert resp.status == 400, problem
        assert resp.content_type == "application/problem+json"
        assert field in problem["detail"], problem
        await adm.follower.caught_up()
        assert adm.live.export() == before
        big = await admin.post(
            "/admin/v1/agencies",
            data=io.BytesIO(b"[" + b"1," * 5_000_000 + b"1]"),
            headers={**OPS, "Content-Type": "application/json"},
        )
        assert big.status == 413
        assert (await _json(big))["code"] == "payload_too_large"


async def test_an_agency_cannot_administer_another_and_the_attempt_is_logged_as_refused(
    exchange_settings: Settings,
) -> None:
    async with running_admin(exchange_settings) as (admin, _):
        assert (
            await admin.patch("/admin/v1/agencies/alice", json={"name": "Mallory"}, headers=bearer("key-bob"))
        ).status == 403
        assert (
            await admin.post("/admin/v1/agencies/alice/keys", json={}, headers=bearer("key-bob"))
        ).status == 403
        assert (
            await admin.patch(
                "/admin/v1/agencies/bob", json={"roles": ["operator"]}, headers=bearer("key-bob")
            )
        ).status == 403
        assert (
            await admin.post("/admin/v1/agencies", json={"id": "eve"}, headers=bearer("key-bob"))
        ).status == 403
        own = await admin.patch(
            "/admin/v1/agencies/bob", json={"name": "Bob's office"}, headers=bearer("key-bob")
        )
        assert own.status == 200, await own.text()
        mine = await _json(await admin.get("/admin/v1/changes", headers=bearer("key-bob")))
        alices = await _json(await admin.get("/admin/v1/changes", headers=bearer("key-alice")))
        listed = await _json(await admin.get("/admin/v1/agencies", headers=bearer("key-bob")))
        openapi = await _json(await admin.get("/admin/openapi.json"))
    assert [a["id"] for a in listed["agencies"]] == ["bob"]
    refused = [(c["action"], c["target"]) for c in mine["changes"] if c["outcome"] == "refused"]
    assert refused == [
        ("agency.update", "agency/alice"),
        ("key.issue", "agency/alice"),
        ("agency.update", "agency/bob"),
        ("agency.create", "agency/eve"),
    ]
    # alice sees the attempts on her documents; nobody else's
    assert {c["actor"] for c in alices["changes"]} <= {"bob", "seed"}
    assert openapi["openapi"] == "3.1.0"
    assert "/admin/v1/access-requests/{id}/approve" in openapi["paths"]


async def test_the_admin_listener_is_not_on_the_exchange_port(exchange_settings: Settings) -> None:
    async with running_gateway(exchange_settings) as (http, _):
        resp = await http.get("/admin/v1/agencies", headers=OPS)
        assert resp.status == 404


async def test_registry_import_then_export_round_trips(
    settings: Settings, unique_name: Any, tmp_path: Path
) -> None:
    first = settings.replace(registry_topic=unique_name("registry-a"))
    second = settings.replace(registry_topic=unique_name("registry-b"))
    assert await import_file(first, settings.registry_path, replace=False, schemas=settings.schemas_dir) > 100
    exported = await export_registry(first)
    assert {a["id"] for a in exported["agencies"]} >= {"bca", "hanoi", "ops"}
    demo = yaml.safe_load(settings.registry_path.read_text())
    assert exported["rights"]["vcb"] == sorted(demo["rights"]["vcb"])
    path = tmp_path / "exported.yaml"
    path.write_text(yaml.safe_dump(exported, allow_unicode=True))
    await import_file(second, path, replace=False, schemas=None)
    assert await export_registry(second) == exported  # export(import(x)) == x
    assert (
        await import_file(second, path, replace=False, schemas=None) == 0
    )  # nothing differs: nothing written


async def test_a_part_started_after_1000_changes_reaches_the_same_state_and_skips_a_malformed_record(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings
    async with running_admin(settings) as (admin, adm):
        keys = []
        for i in range(500):
            issued = await _json(await admin.post("/admin/v1/agencies/bob/keys", json={}, headers=OPS))
            keys.append(issued)
            patched = await admin.patch("/admin/v1/agencies/bob", json={"rate_limit": i + 1}, headers=OPS)
            assert patched.status == 200
        for issued in keys[:250]:  # half of them revoked again
            assert (
                await admin.delete(f"/admin/v1/agencies/bob/keys/{issued['key_id']}", headers=OPS)
            ).status == 204
        producer = make_producer(settings)
        await producer.start()
        try:
            topic = Topics(settings).registry().name
            await _sent(producer, topic, b"{not json", key=b"agency/bob")
            await _sent(
                producer,
                topic,
                orjson.dumps({"kind": "agency", "id": "bob", "rev": 1, "doc": 7}),
                key=b"agency/bob",
            )
            bad_right = Entry(kind="right", id="call.bob.x.y", rev=1, doc={"kind": "call", "client": "Bob!"})
            await _sent(producer, topic, bad_right.encode(), key=bad_right.key)
        finally:
            await producer.stop()
        after = await admin.patch("/admin/v1/agencies/bob", json={"name": "After the garbage"}, headers=OPS)
        assert after.status == 200, await after.text()
        expected = adm.live.export()
        assert adm.metrics.skipped._value.get() == 3
        async with running_gateway(settings) as (_http, gw):
            assert gw.follower.live.export() == expected
            assert gw.registry.agencies["bob"].name == "After the garbage"
            assert gw.registry.agencies["bob"].rate_limit == 500
            assert gw.registry.authenticate(keys[-1]["key"]) is not None
            assert gw.registry.authenticate(keys[0]["key"]) is None
        second = RegistryFollower(settings, part="check")
        await second.start()
        try:
            assert second.live.export() == expected
        finally:
            await second.stop()


async def test_ndxp_admin_runs_the_same_operations_from_a_terminal(exchange_settings: Settings) -> None:
    import subprocess
    import sys

    async with running_admin(exchange_settings) as (admin, _):
        url = str(admin._base_url).rstrip("/")

        def ndxp(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "broker.cli", "admin", "--url", url, *args],
                                  capture_output=True, text=True, timeout=60)  # fmt: skip

        added = await asyncio.to_thread(ndxp, "--key", "key-ops", "agencies", "add", "dan", "--name", "Dan")
        assert added.returncode == 0, added.stderr
        assert added.stdout.splitlines()[0].split() == ["ID", "CODE", "NAME", "ROLES", "RATE_LIMIT"]
        issued = await asyncio.to_thread(ndxp, "--key", "key-ops", "--json", "keys", "issue", "dan")
        key = orjson.loads(issued.stdout)["keys"][0]["key"]
        listed = await asyncio.to_thread(ndxp, "--key", key, "--json", "agencies", "list")
        assert [a["id"] for a in orjson.loads(listed.stdout)["agencies"]] == ["dan"]
        refused = await asyncio.to_thread(ndxp, "--key", key, "agencies", "add", "eve")
        assert refused.returncode == 1
        assert refused.stderr.strip().endswith("403 access_denied: only an operator adds agencies")
        changes = await asyncio.to_thread(ndxp, "--key", "key-ops", "changes")
    last = changes.stdout.splitlines()[-1].split()
    assert last[1:] == ["dan", "agency.create", "agency/eve", "refused"]
