"""Exchanges across real processes: several gateway workers, adapter restarts, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from aiokafka import TopicPartition

from broker.envelope import Reply, RequestMeta, now_ms, request_topic
from broker.kafka import TopicSpec, ensure_topics, make_consumer, make_producer
from broker.localkafka import free_port
from broker.settings import Settings, child_environment
from tests.integration.exchange_fixtures import EchoHandlers, running_adapter

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
ALICE = {"Authorization": "Bearer key-alice"}


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return child_environment(
        settings,
        SCHEMAS_DIR=str(settings.schemas_dir),
        REGISTRY=str(settings.registry_path),
        INSTANCE_ID=settings.instance_id,
        MAX_BODY_BYTES=str(settings.max_body_bytes),
        **extra,
    )


@contextmanager
def gateway_process(
    settings: Settings, workers: int, log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "gateway", "--port", str(port),
             "--workers", str(workers)],
            env=_env(settings), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b"gateway ready" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_1000_concurrent_exchanges_through_two_workers_get_their_own_answers(
    exchange_settings: Settings, provider: str, tmp_path: Path
) -> None:
    handlers = EchoHandlers()
    async with running_adapter(exchange_settings, provider, handlers):
        with gateway_process(exchange_settings, 2, tmp_path / "gw.log") as (base, _):
            connector = aiohttp.TCPConnector(limit=200)
            async with aiohttp.ClientSession(base, connector=connector) as http:

                async def call(i: int) -> tuple[int, int, dict[str, str]]:
                    async with http.post(
                        f"/v1/exchange/{provider}/echo", json={"msg": f"m-{i}"}, headers=ALICE
                    ) as resp:
                        return i, resp.status, await resp.json(content_type=None)

                async with asyncio.timeout(120):
                    results = await asyncio.gather(*(call(i) for i in range(1000)))
                # Whichever worker answers /metrics, it counts both workers' exchanges.
                totals = set()
                for _ in range(6):
                    async with http.get("/metrics", headers={"Connection": "close"}) as resp:
                        totals.add(_exchanges_total(await resp.text()))
    assert [status for _, status, _ in results] == [200] * 1000
    assert all(body["msg"] == f"m-{i}" for i, _, body in results)  # no crossed replies
    workers = Counter(body["via"] for _, _, body in results)
    assert len(workers) == 2, workers  # both workers served, each on its own reply topic
    assert sum(handlers.calls.values()) == 1000  # none lost, none processed twice
    assert totals == {1000.0}


def _exchanges_total(exposition: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith("ndxp_exchanges_total{")
    )


async def test_sigterm_on_gateway_under_load_completes_in_flight_and_exits_0(
    exchange_settings: Settings, provider: str, tmp_path: Path
) -> None:
    handlers = EchoHandlers()
    async with running_adapter(exchange_settings, provider, handlers):
        with gateway_process(exchange_settings, 1, tmp_path / "gw.log") as (base, proc):
            async with aiohttp.ClientSession(base) as http:

                async def call(i: int) -> int:
                    async with http.post(
                        f"/v1/exchange/{provider}/echo",
                        json={"msg": f"s-{i}", "sleep_ms": 800},
                        headers=ALICE,
                    ) as resp:
                        await resp.read()
                        return resp.status

                calls = [asyncio.create_task(call(i)) for i in range(50)]
                deadline = time.monotonic() + 10
                while len(handlers.calls) < 50 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                proc.send_signal(signal.SIGTERM)
                statuses = await asyncio.gather(*calls)
                code = await asyncio.to_thread(proc.wait, 30)
    assert statuses == [200] * 50
    assert code == 0, (tmp_path / "gw.log").read_text()


async def test_adapter_killed_mid_stream_loses_nothing_and_answers_nothing_twice(
    exchange_settings: Settings, provider: str, tmp_path: Path
) -> None:
    settings = exchange_settings
    total = 400
    topic = request_topic(provider, "echo")
    replies = f"ndxp.reply.{settings.instance_id}-test"
    await ensure_topics(settings, [TopicSpec(name=topic, partitions=4), TopicSpec(name=replies)])
    producer = make_producer(settings)
    await producer.start()
    try:
        for i in range(total):
            meta = RequestMeta(
                exchange_id=f"x-{i}", client="alice", provider=provider, service="echo",
                reply_to=replies, deadline_ms=now_ms() + 300_000,
            )  # fmt: skip
            body = f'{{"msg": "k-{i}", "sleep_ms": 40}}'.encode()
            await producer.send(topic, body, key=meta.exchange_id.encode(), headers=meta.headers())
        await producer.flush()
    finally:
        await producer.stop()

    seen: Counter[str] = Counter()
    consumer = make_consumer(settings, isolation_level="read_committed")
    await consumer.start()
    consumer.assign([TopicPartition(replies, 0)])

    async def collect(until: int, within_s: float) -> None:
        async with asyncio.timeout(within_s):
            while len(seen) < until:
                batch = await consumer.getmany(timeout_ms=200)
                for msgs in batch.values():
                    seen.update(Reply.from_message(m.headers, m.value).exchange_id for m in msgs)

    env = _env(settings, ADAPTER_CONCURRENCY="8")
    cmd = [sys.executable, "-m", "tests.integration.adapter_proc", provider]
    log = (tmp_path / "adapter.log").open("wb")
    try:
        first = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        await collect(100, 60)
        os.kill(first.pid, signal.SIGKILL)  # mid-stream, transaction possibly open
        first.wait()
        assert len(seen) < total, "the stream ended before the kill; make it longer"
        second = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        await collect(total, 120)
        await asyncio.sleep(2)  # anything answered twice would show by now
        await collect(total, 5)
        second.terminate()
        assert await asyncio.to_thread(second.wait, 30) == 0
    finally:
        log.close()
        await consumer.stop()
        for p in (locals().get("first"), locals().get("second")):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert set(seen) == {f"x-{i}" for i in range(total)}
    assert max(seen.values()) == 1, [k for k, v in seen.items() if v > 1][:5]
