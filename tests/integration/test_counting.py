"""Exact transaction counting: records for every exchange, a counter that survives SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from broker.counter.counter import TxCounter
from broker.counter.stats import StatsView, summarise
from broker.kafka import TopicSpec, ensure_topics, make_consumer, make_producer
from broker.metrics import CounterMetrics
from broker.model.records import TxRecord, day_of
from broker.settings import Settings, child_environment
from tests.fixtures import OPERATOR
from tests.integration.exchange_fixtures import (
    EchoHandlers,
    counter_caught_up,
    running_adapter,
    running_gateway,
    view_caught_up,
)

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]


async def test_stats_count_every_exchange_by_outcome_client_and_service(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings
    handlers = EchoHandlers()
    echo, slow = f"/v1/exchange/{provider}/echo", f"/v1/exchange/{provider}/slow"
    alice, bob = {"Authorization": "Bearer key-alice"}, {"Authorization": "Bearer key-bob"}
    plan: list[tuple[str, dict[str, str], Any]] = (
        [(echo, alice, {"msg": f"ok{i}"}) for i in range(20)]
        + [(echo, alice, {"msg": f"m{i}", "mode": "missing"}) for i in range(5)]
        + [(echo, alice, {"msg": f"c{i}", "mode": "crash"}) for i in range(3)]
        + [(echo, alice, {"msg": f"b{i}", "mode": "bad"}) for i in range(2)]
        + [(echo, alice, {"msg": 1}) for _ in range(4)]
        + [(echo, bob, {"msg": "no"}) for _ in range(3)]
        + [(echo, {}, {"msg": "who"}) for _ in range(2)]
        + [(slow, alice, {"msg": "zzz"})]
    )
    answered: Counter[tuple[str, str, str]] = Counter()
    counter = TxCounter(settings, CounterMetrics(CollectorRegistry()))
    async with running_adapter(settings, provider, handlers), running_gateway(settings) as (http, gw):
        await counter.start()
        try:
            for url, headers, body in plan:
                resp = await http.post(url, json=body, headers=headers)
                payload = await resp.json(content_type=None)
                client = {"key-alice": "alice", "key-bob": "bob"}.get(
                    headers.get("Authorization", "").removeprefix("Bearer "), "-"
                )
                outcome = "ok" if resp.status == 200 else payload["code"]
                if outcome == "record_not_found":
                    outcome = "business_error"
                service = url.rsplit("/", 1)[1] if client != "-" else "-"
                answered[(client, service, outcome)] += 1
            day = day_of(time.time() * 1000, settings.stats_utc_offset_hours)
            async with asyncio.timeout(30):
                while True:
                    stats = await (await http.get(f"/v1/stats?day={day}", headers=OPERATOR)).json()
                    if stats["total"] >= len(plan):
                        break
                    await asyncio.sleep(0.2)
            bad_day = await http.get("/v1/stats?day=yesterday", headers=OPERATOR)
            assert bad_day.status == 400
        finally:
            await counter.stop()
    assert stats["total"] == len(plan)
    by_outcome: Counter[str] = Counter()
    by_client: Counter[str] = Counter()
    for (client, _, outcome), n in answered.items():
        by_outcome[outcome] += n
        by_client[client] += n
    assert stats["by_outcome"] == dict(by_outcome)
    assert stats["by_client"] == dict(by_client)
    assert stats["by_service"] == {
        f"{provider}/echo": len(plan) - 1 - answered[("-", "-", "unauthorized")],
        f"{provider}/slow": 1,
        "-/-": answered[("-", "-", "unauthorized")],
    }
    assert by_outcome["timeout"] == 1
    assert by_outcome["business_error"] == 5
    assert gw.recorder.pending == 0


@pytest.mark.slow
async def test_counter_killed_mid_stream_and_duplicates_still_give_exact_counts(
    exchange_settings: Settings, provider: str, tmp_path: Path
) -> None:
    settings = exchange_settings
    await ensure_topics(settings, [TopicSpec(name=settings.tx_topic, partitions=4)])
    t0 = time.time() * 1000
    records = [
        TxRecord(
            exchange_id=f"e-{i}",
            client=f"client{i % 3}",
            provider=provider,
            service=("echo", "slow")[i % 2],
            outcome=("ok", "ok", "timeout", "business_error")[i % 4],
            status=200,
            t_in=t0 + i,
        )
        for i in range(3000)
    ]
    duplicates = records[::30]  # the same record sent again later
    producer = make_producer(settings)
    await producer.start()
    try:
        for rec in [*records, *duplicates]:
            await producer.send(settings.tx_topic, rec.encode(), key=rec.exchange_id.encode())
        await producer.flush()
    finally:
        await producer.stop()

    env = child_environment(
        settings,
        TX_TOPIC=settings.tx_topic,
        STATS_TOPIC=settings.stats_topic,
        COUNTER_BATCH="20",
        INSTANCE_ID=settings.instance_id,
    )
    cmd = [sys.executable, "-m", "broker.cli", "counter"]
    view = StatsView(settings)
    await view.start()
    log = (tmp_path / "counter.log").open("wb")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        async with asyncio.timeout(60):
            while sum(view.counts.values()) < 300:
                await asyncio.sleep(0.05)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        assert sum(view.counts.values()) < len(records), "counted everything before the kill"
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        async with asyncio.timeout(120):
            while sum(view.counts.values()) < len(records):
                await asyncio.sleep(0.1)
        await counter_caught_up(settings)  # an over-count is committed by now: the view shows it
        await view_caught_up(view)
        procs[1].send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(procs[1].wait, 30) == 0
    finally:
        log.close()
        await view.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    day = day_of(t0, settings.stats_utc_offset_hours)
    expected: Counter[str] = Counter(r.outcome for r in records)
    got = summarise(view.counts, day)
    assert got["total"] == len(records), (tmp_path / "counter.log").read_text()[-3000:]
    assert got["by_outcome"] == dict(expected)
    assert got["by_client"] == dict(Counter(r.client for r in records))


async def test_every_exchange_leaves_a_transaction_record(exchange_settings: Settings, provider: str) -> None:
    settings = exchange_settings
    answered: dict[str, str] = {}
    sizes: dict[str, int] = {}
    async with (
        running_adapter(settings, provider, EchoHandlers()),
        running_gateway(settings) as (http, _),
    ):
        for i in range(5):
            resp = await http.post(
                f"/v1/exchange/{provider}/echo",
                json={"msg": f"r{i}"},
                headers={
                    "Authorization": "Bearer key-alice",
                    "X-Request-Id": f"rec-{i}",
                    "X-NDXP-User-Id": "officer-7",
                    "X-NDXP-Purpose": "ho-so-123",
                },
            )
            assert resp.status == 200
            answered[resp.headers["X-NDXP-Exchange-Id"]] = f"rec-{i}"
            sizes[resp.headers["X-NDXP-Exchange-Id"]] = len(await resp.read())
    # Each exchange was answered only once its record was in Kafka.
    consumer = make_consumer(settings)
    await consumer.start()
    tps = [TopicPartition(settings.tx_topic, p) for p in range(4)]
    consumer.assign(tps)
    got: dict[str, TxRecord] = {}
    try:
        async with asyncio.timeout(20):
            while len(got) < 5:
                batch = await consumer.getmany(timeout_ms=200)
                for msgs in batch.values():
                    for m in msgs:
                        rec = TxRecord.decode(m.value or b"")
                        got[rec.exchange_id] = rec
    finally:
        await consumer.stop()
    assert set(got) == set(answered)
    assert {eid: r.request_id for eid, r in got.items()} == answered  # the label is recorded
    resp_id = next(eid for eid, label in answered.items() if label == "rec-3")
    rec = got[resp_id]
    assert (rec.client, rec.provider, rec.service, rec.outcome, rec.status) == (
        "alice",
        provider,
        "echo",
        "ok",
        200,
    )
    assert rec.t_in <= (rec.t_sent or 0) <= (rec.t_reply or 0) <= (rec.t_out or 0)
    # The bytes as they crossed the gateway: the request body sent, the answer's body returned.
    assert rec.request_bytes == len(json.dumps({"msg": "r3"})), rec.request_bytes  # aiohttp's json=
    assert rec.response_bytes == sizes[resp_id], (rec.response_bytes, sizes)
    assert (rec.user_id, rec.purpose) == ("officer-7", "ho-so-123")
