"""Hostile and broken input: nothing leaks, nothing is lost, no Kafka loop dies."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from ipaddress import ip_network
from typing import Any

import pytest
from aiohttp import ClientSession
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from broker.counter.counter import TxCounter
from broker.kafka import TopicSpec, ensure_topics, make_consumer, make_producer
from broker.metrics import CounterMetrics
from broker.model.envelope import (
    H_EXCHANGE_ID,
    Reply,
    ReplyOutcome,
    RequestMeta,
    now_ms,
)
from broker.model.records import TxRecord
from broker.settings import Settings
from tests.fixtures import OPERATOR, delivered, sample
from tests.integration.exchange_fixtures import (
    EchoHandlers,
    running_adapter,
    running_counter,
    running_gateway,
    settled,
    view_caught_up,
)

pytestmark = pytest.mark.kafka
ALICE = {"Authorization": "Bearer key-alice"}


async def _read_all(settings: Settings, topic: str, count: int, partitions: int = 1) -> list[bytes]:
    consumer = make_consumer(settings, isolation_level="read_committed")
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    got: list[bytes] = []
    try:
        async with asyncio.timeout(20):
            while len(got) < count:
                for msgs in (await consumer.getmany(timeout_ms=200)).values():
                    got.extend(m.value or b"" for m in msgs)
    finally:
        await consumer.stop()
    return got


def _port(http: ClientSession) -> int:
    base = http._base_url  # the test server's address
    assert base is not None
    assert base.port is not None
    return base.port


async def _raw_http(port: int, request: bytes) -> tuple[int, dict[str, str]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers


async def test_a_null_header_value_is_dead_lettered_and_the_adapter_keeps_serving(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings
    replies = settings.names.reply(f"{settings.instance_id}-null")
    await ensure_topics(settings, [TopicSpec(name=replies)])
    handlers = EchoHandlers()
    async with running_adapter(settings, provider, handlers) as adapter:
        producer = make_producer(settings)
        await producer.start()
        try:
            topic = settings.names.requests(provider)
            await delivered(producer, topic, b'{"msg": "x"}', headers=[(H_EXCHANGE_ID, None)])
            meta = RequestMeta(
                exchange_id="after-null", client="alice", provider=provider, service="echo",
                reply_to=replies, deadline_ms=now_ms() + 60_000,
            )  # fmt: skip
            await delivered(producer, topic, b'{"msg": "still here"}', headers=meta.headers())
        finally:
            await producer.stop()
        (reply,) = await _read_all(settings, replies, 1)
        (dead,) = await _read_all(settings, settings.names.dlq(provider), 1)
        assert adapter.healthy
    assert dead == b'{"msg": "x"}'
    assert handlers.calls == {"still here": 1}
    assert b"still here" in reply


async def test_malformed_records_are_dead_lettered_and_counting_goes_on(
    exchange_settings: Settings,
) -> None:
    settings = exchange_settings
    await ensure_topics(settings, [TopicSpec(name=settings.tx_topic, partitions=4)])
    good = [
        TxRecord(exchange_id=f"g-{i}", client="alice", provider="p", service="s", outcome="ok",
                 status=200, t_in=now_ms())
        for i in range(3)
    ]  # fmt: skip
    bad = [
        good[0].encode().replace(b'"t_in":', b'"t_in":"soon","x":'),  # not a number (and an extra field)
        good[0].encode().replace(b'"t_in":', b'"t_in":"soon",'),  # duplicate key, text time
        good[1].encode().replace(b'"client":"alice"', b'"client":"a|b"'),  # would corrupt the stats key
        b"not json",
    ]
    producer = make_producer(settings)
    await producer.start()
    try:
        for raw in [bad[0], bad[1], *[g.encode() for g in good], bad[2], bad[3]]:
            await delivered(producer, settings.tx_topic, raw, partition=0)
    finally:
        await producer.stop()
    counter = TxCounter(settings, CounterMetrics(CollectorRegistry()))
    async with counter:
        async with asyncio.timeout(30):
            while sum(counter.counts.values()) < 3:
                await asyncio.sleep(0.1)
        dead = await _read_all(settings, counter.dlq_topic, 3)
        assert counter.healthy
    assert sum(counter.counts.values()) == 3
    assert all(eid in counter.seen for eid in ("g-0", "g-1", "g-2"))
    assert len(counter.seen) == 3
    assert len(dead) >= 3
    assert sample(counter.metrics.registry, "ndxp_counter_malformed_total") >= 3


async def test_a_rejected_call_under_an_id_never_erases_a_later_exchange_under_that_id(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings
    url = f"/v1/exchange/{provider}/echo"
    counter = TxCounter(settings, CounterMetrics(CollectorRegistry()))
    async with (
        counter,
        running_adapter(settings, provider, EchoHandlers()),
        running_gateway(settings) as (http, gw),
    ):
        rejected = await http.post(url, json={"msg": "a"}, headers={"X-Request-Id": "X-1"})
        ok = await http.post(url, json={"msg": "b"}, headers={**ALICE, "X-Request-Id": "X-1"})
        assert (rejected.status, ok.status) == (401, 200)
        ids = {rejected.headers["X-NDXP-Exchange-Id"], ok.headers["X-NDXP-Exchange-Id"]}
        async with asyncio.timeout(30):  # the unauthenticated one is tallied, written within a second
            while sum(counter.counts.values()) < 2:
                await asyncio.sleep(0.1)
        await settled(gw, settings)
        outcomes = Counter({k.outcome: n for k, n in counter.counts.items()})
    assert len(ids) == 2
    assert outcomes == {"unauthorized": 1, "ok": 1}


async def test_slow_uploads_get_408_without_holding_a_slot_others_need(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings.replace(max_in_flight=1, body_timeout_s=1.0)
    async with (
        running_adapter(settings, provider, EchoHandlers()),
        running_gateway(settings) as (http, _),
    ):
        port = _port(http)
        head = (
            f"POST /v1/exchange/{provider}/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-alice\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        ).encode()
        slow = [asyncio.create_task(_raw_http(port, head + b'{"msg": ')) for _ in range(3)]
        await asyncio.sleep(0.2)
        meanwhile = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "fast"}, headers=ALICE)
        assert meanwhile.status == 200, await meanwhile.text()
        statuses = [status for status, _ in await asyncio.gather(*slow)]
        text = await (await http.get("/metrics", headers=OPERATOR)).text()
    assert statuses == [408, 408, 408]
    assert f'outcome="request_timeout",provider="{provider}"' in text
    assert 'outcome="internal_error"' not in text


async def test_header_bytes_that_are_not_utf8_get_400_and_one_record(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings
    async with (
        running_adapter(settings, provider, EchoHandlers()),
        running_gateway(settings) as (http, _),
    ):
        port = _port(http)
        body = b'{"msg": "x"}'
        statuses = []
        for name in (b"Authorization: Bearer key-\xff\xfe", b"X-NDXP-Purpose: h\xe0-s\xff"):
            request = (
                f"POST /v1/exchange/{provider}/echo HTTP/1.1\r\nHost: x\r\n".encode()
                + (b"" if name.startswith(b"Authorization") else b"Authorization: Bearer key-alice\r\n")
                + name
                + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            status, headers = await _raw_http(port, request)
            statuses.append((status, "X-NDXP-Exchange-Id" in headers, headers.get("Server")))
        text = await (await http.get("/metrics", headers=OPERATOR)).text()
        stats = await http.get("/v1/stats?day=20261123", headers=OPERATOR)
        answer = await stats.json(content_type=None)
    assert statuses == [(400, True, "ndxp"), (400, True, "ndxp")]
    assert text.count('outcome="invalid_header"') == 2  # both recorded (one unauthenticated)
    assert (stats.status, answer["code"]) == (400, "invalid_request")


async def test_a_second_reply_for_one_exchange_is_ignored(exchange_settings: Settings, provider: str) -> None:
    """A lookup served twice (after a crash) sends two replies; the caller sees one answer."""
    settings = exchange_settings
    async with running_gateway(settings) as (_, gw):
        producer = make_producer(settings)
        await producer.start()
        try:
            fut = gw.replies.expect("dup")
            reply = Reply(exchange_id="dup", status=200, outcome=ReplyOutcome.OK, body=b"{}")
            for _ in range(2):
                await delivered(producer, gw.replies.topic, b"{}", headers=reply.headers())
            got = await asyncio.wait_for(fut, 10)
            async with asyncio.timeout(10):
                while sample(gw.metrics.registry, "ndxp_late_replies_total") < 1:
                    await asyncio.sleep(0.05)
        finally:
            await producer.stop()
    assert got.exchange_id == "dup"
    assert sample(gw.metrics.registry, "ndxp_late_replies_total") == 1


async def test_failed_logins_are_limited_per_address_and_tallied_not_written_one_by_one(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings.replace(auth_failure_rate=5.0)  # burst 20
    url = f"/v1/exchange/{provider}/echo"
    counter = TxCounter(settings, CounterMetrics(CollectorRegistry()))
    async with counter, running_gateway(settings) as (http, gw):
        statuses: Counter[int] = Counter()
        started = time.monotonic()
        for i in range(60):
            async with http.post(url, json={"msg": "x"}, headers={"Authorization": f"Bearer guess-{i}"}) as r:
                statuses[r.status] += 1
        elapsed = time.monotonic() - started
        # The right key from that address is admitted: a shared address (a NAT, a proxy) is no lockout.
        async with http.post(url, json={"msg": "x"}, headers=ALICE) as r:
            admitted = r.status
        async with asyncio.timeout(30):
            while sum(counter.counts.values()) < 60:
                await asyncio.sleep(0.1)
        await settled(gw, settings)
        outcomes = Counter({k.outcome: n for k, n in counter.counts.items()})
        written = sample(gw.metrics.registry, "ndxp_tx_records_sent_total")
    # A burst of 20, then 5 a second: however slow this machine, far fewer than 60 get through.
    assert 20 <= statuses[401] <= 21 + 5 * elapsed, (statuses, elapsed)
    assert statuses[429] > 0, statuses
    assert statuses[401] + statuses[429] == 60
    # Authenticated (no provider runs here: its exchange then times out), never refused for the address.
    assert admitted not in (401, 429), (
        f"a valid key is never refused for its address's failed logins: {admitted}"
    )
    assert outcomes["unauthorized"] == statuses[401]
    assert outcomes["rate_limited"] == statuses[429]  # all counted
    assert written <= 10, f"{written} Kafka records for 61 rejected calls: they must be tallied"


async def test_stats_show_each_agency_its_own_rows_and_metrics_take_an_operator(
    exchange_settings: Settings, provider: str
) -> None:
    """By default /metrics (who calls what, who is subscribed) is the operator's, and /v1/stats shows an
    agency the rows it is the client or the provider of; NDXP_EXPOSE makes either public again."""
    settings = exchange_settings
    bob, slowpoke = {"Authorization": "Bearer key-bob"}, {"Authorization": "Bearer key-slowpoke"}
    async with (
        running_adapter(settings, provider, EchoHandlers()),
        running_counter(settings),
        running_gateway(settings) as (http, gw),
    ):
        for who, status in ((ALICE, 200), (bob, 403), (slowpoke, 200)):
            resp = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "m"}, headers=who)
            assert resp.status == status, await resp.text()
        await settled(gw, settings)
        await view_caught_up(gw.stats)

        async def stats(headers: dict[str, str]) -> Any:
            resp = await http.get("/v1/stats", headers=headers)
            return resp.status, await resp.json(content_type=None)

        anonymous = await stats({})
        mine = {name: (await stats(h))[1]["by_client"] for name, h in (("alice", ALICE), ("bob", bob))}
        as_provider = (await stats({"Authorization": "Bearer key-provider"}))[1]["by_client"]
        everything = (await stats(OPERATOR))[1]
        metrics = {
            name: (await http.get("/metrics", headers=h)).status
            for name, h in (("anonymous", {}), ("alice", ALICE), ("ops", OPERATOR))
        }
    assert (anonymous[0], anonymous[1]["code"]) == (401, "unauthorized")
    assert mine == {"alice": {"alice": 1}, "bob": {"bob": 1}}
    assert as_provider == {"alice": 1, "bob": 1, "slowpoke": 1}  # a provider sees who called it
    assert everything["by_client"] == {"alice": 1, "bob": 1, "slowpoke": 1}
    assert everything["total"] == 3
    assert metrics == {"anonymous": 401, "alice": 403, "ops": 200}
    public = settings.replace(expose=frozenset({"stats", "metrics"}))
    async with running_gateway(public) as (http, gw):
        await view_caught_up(gw.stats)
        shown = [(await http.get(p)).status for p in ("/v1/stats", "/metrics")]
        anyone = await (await http.get("/v1/stats")).json()
    assert shown == [200, 200]
    assert anyone["by_client"] == {"alice": 1, "bob": 1, "slowpoke": 1}


async def test_a_valid_key_is_admitted_from_an_address_whose_failed_logins_are_spent(
    exchange_settings: Settings, provider: str
) -> None:
    """Security review, finding 2: 21 wrong keys from one address used to lock out every agency behind it."""
    settings = exchange_settings.replace(auth_failure_rate=1.0)  # burst 4
    url = f"/v1/exchange/{provider}/echo"
    async with running_adapter(settings, provider, EchoHandlers()), running_gateway(settings) as (http, _):
        wrong = [(await http.post(url, json={"msg": "x"}, headers={"Authorization": f"Bearer no-{i}"})).status
                 for i in range(10)]  # fmt: skip
        assert wrong[:4] == [401] * 4
        assert set(wrong[4:]) == {429}, wrong
        for headers in (ALICE, {"Authorization": "Bearer key-slowpoke"}):
            ok = await http.post(url, json={"msg": "still served"}, headers=headers)
            assert ok.status == 200, await ok.text()


async def test_behind_a_trusted_proxy_the_allowance_is_per_forwarded_address(
    exchange_settings: Settings, provider: str
) -> None:
    url = f"/v1/exchange/{provider}/echo"

    async def failures(http: Any, forwarded_for: str, n: int) -> list[int]:
        headers = {"Authorization": "Bearer wrong", "X-Forwarded-For": forwarded_for}
        return [(await http.post(url, json={"msg": "x"}, headers=headers)).status for _ in range(n)]

    trusting = exchange_settings.replace(auth_failure_rate=1.0, trusted_proxies=(ip_network("127.0.0.0/8"),))
    async with running_gateway(trusting) as (http, _):
        assert (await failures(http, "203.0.113.7", 6))[-1] == 429
        # Another caller behind the same proxy keeps its own allowance; a client's own X-Forwarded-For
        # entry before the proxy's is not believed (the right-most untrusted hop is the client).
        assert await failures(http, "203.0.113.7, 203.0.113.8", 1) == [401]
        assert await failures(http, "198.51.100.1", 1) == [401]
    plain = exchange_settings.replace(auth_failure_rate=1.0)  # no proxy trusted: the header is ignored
    async with running_gateway(plain) as (http, _):
        assert (await failures(http, "203.0.113.7", 6))[-1] == 429
        assert await failures(http, "198.51.100.1", 1) == [429], "every caller here is 127.0.0.1"


async def test_user_and_purpose_headers_are_identifiers_not_free_text(
    exchange_settings: Settings, provider: str
) -> None:
    """Security review, finding 10: ~8 KB of anything (names, phone numbers, HTML/SQL) travelled in
    X-NDXP-User-Id and X-NDXP-Purpose to the provider and into events other agencies read."""
    url = f"/v1/exchange/{provider}/echo"
    async with (
        running_adapter(exchange_settings, provider, EchoHandlers()),
        running_gateway(exchange_settings) as (http, _),
    ):
        for name, value in (
            ("X-NDXP-User-Id", "Nguyễn Văn A 0912345678"),  # a name and a phone number: not an identifier
            ("X-NDXP-User-Id", "x" * 129),
            ("X-NDXP-User-Id", "<script>alert(1)</script>"),
            ("X-NDXP-Purpose", "'; DROP TABLE citizens; --"),
            ("X-NDXP-Purpose", "p" * 129),
        ):
            resp = await http.post(url, json={"msg": "x"}, headers={**ALICE, name: value})
            problem = await resp.json()
            assert (resp.status, problem["code"]) == (400, "invalid_request"), (name, value, problem)
            assert name in problem["detail"]
        fine = {"X-NDXP-User-Id": "cán-bộ.042@hanoi", "X-NDXP-Purpose": "ho-so 123/2026"}
        assert (await http.post(url, json={"msg": "x"}, headers={**ALICE, **fine})).status == 200


async def test_a_request_aiohttp_cannot_parse_logs_no_key_and_names_no_version(
    exchange_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from urllib.parse import urlsplit

    async with running_gateway(exchange_settings) as (http, _):
        where = urlsplit(str(http._base_url))
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-of-a-victim\x01\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    assert head.split(" ", 2)[1] == "400", head
    assert "Server: ndxp" in head.split("\r\n")
    assert "aiohttp" not in head
    assert "Python" not in head
    logged = caplog.text
    assert "Error handling request" in logged  # the fault is logged ...
    assert "key-of-a-victim" not in logged  # ... without the caller's key
