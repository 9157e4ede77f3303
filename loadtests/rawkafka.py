"""The raw-Kafka request/reply ceiling: what aiokafka alone reaches on this Kafka.

The baseline the benchmark compares the platform against. ``echo`` consumes
a request topic (4 partitions, a consumer group) and produces each value
back to the reply topic its header names (acks=all, idempotent), committing
offsets asynchronously every 100 ms, as lookup adapters do. ``callers``
runs N concurrent callers for a bounded time: each produces a request and
awaits its reply (correlated by id) before the next, like an agency system
calling the gateway. No HTTP, no validation, no records: Kafka's own cost.

    python loadtests/rawkafka.py echo --bootstrap 127.0.0.1:9092 --topic t
    python loadtests/rawkafka.py callers --bootstrap … --topic t --users 64 --seconds 30

``callers`` prints one JSON line: requests, errors, rps, p50/p95/p99 (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time

import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

RAW_COMMIT_EVERY_S = 0.1
PAYLOAD = orjson.dumps({"cccd": "001090000111", "padding": "x" * 200})


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2)


async def _topics(bootstrap: str, names: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(Exception):  # already there
            await admin.create_topics([NewTopic(n, p, 1) for n, p in names.items()])
        for _ in range(100):
            described = await admin.describe_topics(list(names))
            if all(t["error_code"] == 0 and t["partitions"] for t in described):
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def echo(bootstrap: str, topic: str) -> None:
    await _topics(bootstrap, {topic: 4})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    producer = _producer(bootstrap)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"{topic}.echo", enable_auto_commit=False,
        auto_offset_reset="latest", fetch_max_wait_ms=500,
    )  # fmt: skip
    await producer.start()
    await consumer.start()
    offsets: dict[TopicPartition, int] = {}

    async def committer() -> None:
        while True:
            await asyncio.sleep(RAW_COMMIT_EVERY_S)
            if offsets:
                todo = dict(offsets)
                offsets.clear()
                with contextlib.suppress(Exception):
                    await consumer.commit(todo)

    task = asyncio.create_task(committer())
    print("echo ready", flush=True)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for tp, msgs in batch.items():
                for m in msgs:
                    headers = dict(m.headers)
                    await producer.send(
                        headers["reply-to"].decode(), m.value, key=m.key, headers=list(m.headers)
                    )
                offsets[tp] = msgs[-1].offset + 1
    finally:
        task.cancel()
        await consumer.stop()
        await producer.stop()


async def callers(bootstrap: str, topic: str, users: int, seconds: float) -> dict[str, float]:
    reply_topic = f"{topic}.reply.{os.getpid()}"
    await _topics(bootstrap, {topic: 4, reply_topic: 1})
    producer = _producer(bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=500, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(reply_topic, 0)
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    await consumer.position(tp)
    waiting: dict[bytes, asyncio.Future[None]] = {}

    async def route() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                for m in msgs:
                    fut = waiting.pop(m.key, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)

    router = asyncio.create_task(route())
    ids = itertools.count()
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    headers = [("reply-to", reply_topic.encode())]

    async def caller(until: float) -> None:
        nonlocal errors
        while loop.time() < until:
            key = str(next(ids)).encode()
            fut = loop.create_future()
            waiting[key] = fut
            started = time.perf_counter()
            try:
                async with asyncio.timeout(10):
                    await (await producer.send(topic, PAYLOAD, key=key, headers=headers))
                    await fut
                latencies.append(time.perf_counter() - started)
            except Exception:
                errors += 1
                waiting.pop(key, None)

    # Warm up briefly (connections, metadata), then measure.
    await asyncio.gather(*(caller(loop.time() + 2) for _ in range(users)))
    latencies.clear()
    started = loop.time()
    await asyncio.gather(*(caller(started + seconds) for _ in range(users)))
    elapsed = loop.time() - started
    router.cancel()
    await consumer.stop()
    await producer.stop()
    return summary(latencies, errors, elapsed)


def summary(latencies: list[float], errors: int, elapsed: float) -> dict[str, float]:
    """Requests, errors, rps and percentiles (ms) of one run."""
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else float("nan")

    return {
        "requests": len(ordered),
        "errors": errors,
        "rps": len(ordered) / elapsed,
        "p50": pct(0.50),
        "p95": pct(0.95),
        "p99": pct(0.99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", choices=["echo", "callers"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    if args.role == "echo":
        uvloop.run(echo(args.bootstrap, args.topic))
    else:
        result = uvloop.run(callers(args.bootstrap, args.topic, args.users, args.seconds))
        print(orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
