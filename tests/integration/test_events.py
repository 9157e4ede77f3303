"""Data-change events: publish, subscribe (Server-Sent Events), resume, replay, rights (issue 12)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, ClientSession

from broker.kafka import make_consumer, topic_partitions
from broker.model.events import rfc3339
from broker.settings import Settings
from tests.integration.exchange_fixtures import running_counter, running_gateway
from tests.integration.test_async import counted

pytestmark = pytest.mark.kafka

PROVIDER = {"Authorization": "Bearer key-provider"}
ALICE = {"Authorization": "Bearer key-alice"}
SLOWPOKE = {"Authorization": "Bearer key-slowpoke"}
BOB = {"Authorization": "Bearer key-bob"}
SSE = {"Accept": "text/event-stream"}


async def publish_all(
    http: ClientSession, provider: str, subjects: int, per_subject: int
) -> list[dict[str, Any]]:
    """Publish ``subjects * per_subject`` events: each subject's in sequence, subjects concurrently."""
    published: list[dict[str, Any]] = []

    async def one_subject(s: int) -> None:
        for seq in range(per_subject):
            data = {"subject": f"s{s}", "seq": seq}
            resp = await http.post(f"/v1/events/{provider}/changed", json=data, headers=PROVIDER)
            assert resp.status == 202, await resp.text()
            published.append({"event_id": (await resp.json())["event_id"], "data": data})

    await asyncio.gather(*(one_subject(s) for s in range(subjects)))
    return published


async def read_events(resp: ClientResponse, n: int, within_s: float = 60) -> list[tuple[str, dict[str, Any]]]:
    """The next ``n`` events of a stream as (id, envelope)."""
    assert resp.status == 200, f"not a stream: {resp.status} {await resp.text()}"
    events: list[tuple[str, dict[str, Any]]] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(within_s):
        while len(events) < n:
            raw = await resp.content.readline()
            assert raw, f"the stream ended after {len(events)} of {n} events"
            line = raw.decode().rstrip("\n")
            if line == "":
                if "data" in fields:
                    events.append((fields["id"], orjson.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return events


async def subscribe(
    http: ClientSession, provider: str, headers: dict[str, str], **extra: str
) -> ClientResponse:
    query = f"?from={extra.pop('since')}" if "since" in extra else ""
    return await http.get(f"/v1/events/{provider}/changed{query}", headers={**headers, **SSE, **extra})


async def position_committed(settings: Settings, client: str, provider: str, within_s: float = 30) -> None:
    """Wait until the subscriber's durable position (its group's offsets) is at the end of the topic."""
    topic = settings.names.events(provider, "changed")
    consumer = make_consumer(settings, group_id=settings.names.subscriber_group(client, provider, "changed"))
    await consumer.start()  # not subscribed: it reads the group's offsets, it joins nothing
    try:
        tps = await topic_partitions(consumer, topic)
        ends = await consumer.end_offsets(tps)
        async with asyncio.timeout(within_s):
            while [tp for tp in tps if (await consumer.committed(tp) or 0) < ends[tp]]:
                await asyncio.sleep(0.1)
    finally:
        await consumer.stop()


def check_order(events: list[tuple[str, dict[str, Any]]]) -> None:
    last: dict[str, int] = defaultdict(lambda: -1)
    for _, ev in events:
        subject, seq = ev["data"]["subject"], ev["data"]["seq"]
        assert seq > last[subject], f"{subject}: event {seq} after {last[subject]}: out of order"
        last[subject] = seq


async def test_two_subscribers_get_every_event_in_order_and_others_are_refused(
    exchange_settings: Settings, provider: str
) -> None:
    async with running_gateway(exchange_settings) as (http, gw), running_counter(exchange_settings):
        published = await publish_all(http, provider, subjects=20, per_subject=50)
        assert len(published) == 1000
        by_id = {p["event_id"]: p["data"] for p in published}
        for who in (ALICE, SLOWPOKE):
            resp = await subscribe(http, provider, who)
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = await read_events(resp, 1000)
            resp.close()
            assert [e["event_id"] for _, e in events if e["event_id"] not in by_id] == []
            assert len({e["event_id"] for _, e in events}) == 1000, "every event once"
            assert all(e["data"] == by_id[e["event_id"]] for _, e in events), "exactly the published bodies"
            assert all(e["producer"] == provider and e["type"] == f"{provider}/changed" for _, e in events)
            check_order(events)
        refused = await subscribe(http, provider, BOB)
        assert refused.status == 403
        assert (await refused.json())["code"] == "access_denied"
        allowed = await (await http.get("/v1/allowed", headers=ALICE)).json()
        assert allowed["events"] == {"publish": [], "subscribe": [f"{provider}/changed"]}
        stats = await counted(http, gw, exchange_settings, 0, within_s=5)
        async with asyncio.timeout(30):
            while stats["events"]["published"].get(f"{provider}/changed", 0) < 1000:
                stats = await counted(http, gw, exchange_settings, 0, within_s=1)
    assert stats["events"]["published"] == {f"{provider}/changed": 1000}, stats
    assert stats["total"] == 0, "events are not exchanges"


async def test_a_subscriber_resumes_after_last_event_id_with_nothing_twice_or_missed(
    exchange_settings: Settings, provider: str
) -> None:
    async with running_gateway(exchange_settings) as (http, _):
        published = await publish_all(http, provider, subjects=10, per_subject=100)
        resp = await subscribe(http, provider, ALICE)
        first = await read_events(resp, 300)
        resp.close()
        last_id = first[-1][0]
        resp = await subscribe(http, provider, ALICE, **{"Last-Event-ID": last_id})
        rest = await read_events(resp, 700)
        # Nothing more is waiting: a heartbeat-free second of silence, then the stream is closed.
        extra = await _more(resp)
        resp.close()
        bad = await subscribe(http, provider, ALICE, **{"Last-Event-ID": "not-an-id"})
        assert bad.status == 400
    ids = [e["event_id"] for _, e in first + rest]
    assert len(ids) == len(set(ids)) == 1000, "nothing twice"
    assert set(ids) == {p["event_id"] for p in published}, "nothing missed"
    assert extra == []
    check_order(first + rest)


async def _more(resp: ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    try:
        return await read_events(resp, 1, within_s=1.5)
    except TimeoutError:
        return []


async def test_replay_from_a_time_and_the_durable_position(
    exchange_settings: Settings, provider: str
) -> None:
    async with running_gateway(exchange_settings) as (http, _):
        await publish_all(http, provider, subjects=5, per_subject=10)
        await asyncio.sleep(0.1)
        since = rfc3339(time.time() * 1000)
        await asyncio.sleep(0.1)
        later = await publish_all(http, provider, subjects=5, per_subject=4)
        resp = await subscribe(http, provider, ALICE, since=since.replace("+00:00", "Z"))
        assert resp.status == 200, await resp.text()
        replayed = await read_events(resp, 20)
        assert await _more(resp) == []
        resp.close()
        assert {e["event_id"] for _, e in replayed} == {p["event_id"] for p in later}
        # Without Last-Event-ID or ?from, the subscriber resumes at its own committed position.
        resp = await subscribe(http, provider, ALICE)
        await position_committed(exchange_settings, "alice", provider)  # every second, by the stream
        resp.close()
        newest = await publish_all(http, provider, subjects=1, per_subject=3)
        resp = await subscribe(http, provider, ALICE)
        got = await read_events(resp, 3)
        resp.close()
        assert [e["event_id"] for _, e in got] == [p["event_id"] for p in newest]
        assert (await subscribe(http, provider, ALICE, since="yesterday")).status == 400


async def test_publishing_is_for_the_provider_and_its_schema(
    exchange_settings: Settings, provider: str
) -> None:
    url = f"/v1/events/{provider}/changed"
    async with running_gateway(exchange_settings) as (http, _):
        denied = await http.post(url, json={"subject": "a", "seq": 1}, headers=ALICE)
        assert (denied.status, (await denied.json())["code"]) == (403, "access_denied")
        bad = await http.post(url, json={"subject": "", "seq": -1, "x": 1}, headers=PROVIDER)
        problem = await bad.json()
        assert (bad.status, problem["code"]) == (400, "invalid_request")
        assert {e["path"] for e in problem["errors"]} >= {"/subject", "/seq"}
        unknown = await http.post(f"/v1/events/{provider}/nothing", json={}, headers=PROVIDER)
        assert unknown.status == 404
        no_accept = await http.get(url, headers=ALICE)
        assert no_accept.status == 400
        catalog = await (await http.get("/v1/events")).json()
        types = {f"{e['provider']}/{e['type']}": e for e in catalog["events"]}
        assert types[f"{provider}/changed"]["key"] == "subject"
        openapi = await (await http.get("/openapi.json")).json()
        assert set(openapi["paths"][url]) == {"get", "post"}


async def test_a_client_holds_a_bounded_number_of_streams(exchange_settings: Settings, provider: str) -> None:
    settings = exchange_settings.replace(max_streams=2)
    async with running_gateway(settings) as (http, gw):
        first = await subscribe(http, provider, ALICE)
        second = await subscribe(http, provider, ALICE)
        assert (first.status, second.status) == (200, 200)
        third = await subscribe(http, provider, ALICE)
        assert (third.status, (await third.json())["code"]) == (429, "rate_limited")
        assert "Retry-After" in third.headers
        other = await subscribe(http, provider, SLOWPOKE)
        assert other.status == 200, "one client's streams do not use up another's"
        first.close()
        async with asyncio.timeout(15):  # the closed stream's slot is freed within a poll
            while True:
                again = await subscribe(http, provider, ALICE)
                if again.status == 200:
                    break
                await asyncio.sleep(0.3)
        for resp in (second, other, again):
            resp.close()
        async with asyncio.timeout(15):
            while gw.streams:
                await asyncio.sleep(0.2)


async def test_a_last_event_id_outside_the_stream_or_a_time_before_1970_is_400_and_frees_its_slot(
    exchange_settings: Settings, provider: str
) -> None:
    """Security review, findings 7 and 13: an offset above 2^63-1 killed the client's fetcher and held
    the stream slot for good; one past the end waited for offsets that do not exist; ?from= before
    1970 was a 500."""
    settings = exchange_settings.replace(max_streams=1)
    async with running_gateway(settings) as (http, _):
        await publish_all(http, provider, subjects=1, per_subject=2)
        for last_event_id in ("0:9223372036854775808", "0:99999", "0:1,1:5000000000000000000"):
            async with asyncio.timeout(30):  # a hang guard: the old code never answered
                resp = await subscribe(http, provider, ALICE, **{"Last-Event-ID": last_event_id})
                problem = await resp.json()
            assert (resp.status, problem["code"]) == (400, "invalid_request"), problem
            assert "outside this stream" in problem["detail"]
        resp = await subscribe(http, provider, ALICE, since="1960-01-01T00:00:00Z")
        assert (resp.status, (await resp.json())["code"]) == (400, "invalid_request")
        # The one slot this client has here is free: a good subscription still opens.
        ok = await subscribe(http, provider, ALICE, **{"Last-Event-ID": "0:0,1:0,2:0,3:0"})
        got = await read_events(ok, 2)
        ok.close()
    assert len(got) == 2


async def _rest_of(resp: ClientResponse, within_s: float = 15) -> list[tuple[str, str]]:
    """Every (event type, data) until the stream ends."""
    out: list[tuple[str, str]] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(within_s):
        while raw := await resp.content.readline():
            line = raw.decode().rstrip("\n")
            if line == "":
                if "data" in fields:
                    out.append((fields.get("event", "message"), fields["data"]))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return out


async def test_an_open_stream_ends_within_a_second_of_its_right_or_key_being_revoked(
    exchange_settings: Settings, provider: str
) -> None:
    from tests.integration.exchange_fixtures import running_admin

    ops = {"Authorization": "Bearer key-ops"}
    async with (
        running_admin(exchange_settings) as (admin, _),
        running_gateway(exchange_settings) as (http, gw),
    ):
        by_right = await subscribe(http, provider, ALICE)
        by_key = await subscribe(http, provider, SLOWPOKE)
        await publish_all(http, provider, 1, 2)
        assert len(await read_events(by_right, 2)) == 2
        assert len(await read_events(by_key, 2)) == 2
        rights = await (await admin.get("/admin/v1/rights", headers=ops)).json()
        alices = next(r for r in rights["rights"] if r["client"] == "alice" and r["kind"] == "subscribe")
        assert (await admin.delete(f"/admin/v1/rights/{alices['id']}", headers=ops)).status == 204
        slowpoke = await (await admin.get("/admin/v1/agencies/slowpoke", headers=ops)).json()
        for key in slowpoke["keys"]:
            gone = await admin.delete(f"/admin/v1/agencies/slowpoke/keys/{key['key_id']}", headers=ops)
            assert gone.status == 204
        revoked_at = time.perf_counter()
        await gw.follower.caught_up()
        await publish_all(http, provider, 1, 3)  # after the revocation: never delivered to them
        right_tail, key_tail = await asyncio.gather(_rest_of(by_right), _rest_of(by_key))
        ended_after = time.perf_counter() - revoked_at
    assert right_tail == [
        ("revoked", '{"detail":"alice may no longer subscribe to ' + provider + '/changed"}')
    ]
    assert key_tail == [("revoked", '{"detail":"the API key was revoked or has expired"}')]
    assert ended_after < 5, ended_after


async def test_a_stream_ends_at_its_lifetime_asking_the_client_to_reconnect(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings.replace(max_stream_s=2.0)
    async with running_gateway(settings) as (http, _):
        stream = await subscribe(http, provider, ALICE)
        tail = await _rest_of(stream, within_s=10)
    assert [kind for kind, _ in tail] == ["reauthenticate"]
