"""Benchmark: events delivered to N live subscribers, against raw Kafka consumers, in one run.

Starts a local Apache Kafka (or uses NDXP_KAFKA_BOOTSTRAP) and `ndxp up` on it,
then:

1. opens ``--subscribers`` Server-Sent Event streams of ``bca/address_changed``
   (``?from=`` now; as the demo registry's subscribers hanoi, danang, bhxh);
2. publishes ``--events`` events as ``bca`` through the gateway
   (``--publishers`` concurrent connections) and measures publish rate;
3. waits until every stream has received every event (bounded by
   ``--timeout``) and reports delivered events/s (all streams together) and the
   time from the first publish to the last delivery; checks that each
   stream got each event exactly once;
4. **replay**: as many new streams reading the same events again from the
   backlog (``?from=``), so that the publishers no longer bound the rate;
5. the **baseline**: as many plain aiokafka consumers reading the same
   events from the topic (no HTTP, no SSE), their delivered events/s.

Everything stays on 127.0.0.1; every loop is bounded in count and time.

    .venv/bin/python -m loadtests.events_bench --subscribers 10 --events 20000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition

from broker.lifecycle import sigterm_as_exit
from broker.model.events import rfc3339
from broker.settings import Settings
from loadtests.bench import kafka_bootstrap, running_platform

SUBSCRIBERS = ("hanoi", "danang", "bhxh")


async def stream(base: str, client: str, since: str, n: int, got: Counter[str], within_s: float) -> float:
    """Read ``n`` events from one SSE stream; the time the last arrived."""
    headers = {"Authorization": f"Bearer demo-{client}", "Accept": "text/event-stream"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=within_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"{base}/v1/events/bca/address_changed?from={since}", headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        seen = 0
        async with asyncio.timeout(within_s):
            async for line in resp.content:
                if line.startswith(b"data: "):
                    got[orjson.loads(line[6:])["event_id"]] += 1
                    seen += 1
                    if seen >= n:
                        return time.monotonic()
    return time.monotonic()


async def publish(base: str, n: int, concurrency: int) -> list[str]:
    ids: list[str] = []
    body = {"address": {"street": "Số 1 Tràng Tiền", "ward": "Phường Hoàn Kiếm", "province": "Hà Nội"},
            "moved_on": "2026-12-01"}  # fmt: skip
    counter = iter(range(n))

    async def worker(http: aiohttp.ClientSession) -> None:
        for i in counter:
            data = {**body, "cccd": f"0010900{i % 100000:05d}", "registration_id": f"TT{i:012X}"}
            async with http.post(
                f"{base}/v1/events/bca/address_changed",
                json=data,
                headers={"Authorization": "Bearer demo-bca"},
            ) as resp:
                assert resp.status == 202, await resp.text()
                ids.append((await resp.json())["event_id"])

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return ids


async def raw_consumers(bootstrap: str, count: int, n: int, within_s: float) -> float:
    """Seconds for ``count`` plain consumers to each read the first ``n`` events of the topic."""
    topic = Settings.from_env().names.events("bca", "address_changed")

    async def one() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    isolation_level="read_committed")  # fmt: skip
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            if not tps:
                await consumer._client.force_metadata_update()
                tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            seen = 0
            async with asyncio.timeout(within_s):
                while seen < n:
                    for msgs in (await consumer.getmany(timeout_ms=500, max_records=2000)).values():
                        for m in msgs:
                            orjson.loads(m.value)  # as the SSE path reads nothing else
                        seen += len(msgs)
        finally:
            await consumer.stop()

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(count)))
    return time.monotonic() - started


async def run(base: str, bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    since = rfc3339(time.time() * 1000 - 1000).replace("+00:00", "Z")
    got: list[Counter[str]] = [Counter() for _ in range(args.subscribers)]
    readers = [
        asyncio.create_task(stream(base, SUBSCRIBERS[i % 3], since, args.events, got[i], args.timeout))
        for i in range(args.subscribers)
    ]
    await asyncio.sleep(2.0)  # every stream open and positioned
    print(f"{args.subscribers} subscribers connected; publishing {args.events} events ...", flush=True)
    started = time.monotonic()
    ids = await publish(base, args.events, args.publishers)
    published_s = time.monotonic() - started
    print(f"published {len(ids)} in {published_s:.1f}s; waiting for every stream ...", flush=True)
    ends = await asyncio.gather(*readers)
    delivered_s = max(ends) - started
    print(
        f"replay: {args.subscribers} new streams read the {args.events} events from the backlog ...",
        flush=True,
    )
    again: list[Counter[str]] = [Counter() for _ in range(args.subscribers)]
    replay_started = time.monotonic()
    replays = [
        stream(base, SUBSCRIBERS[i % 3], since, args.events, again[i], args.timeout)
        for i in range(args.subscribers)
    ]
    replay_ends = await asyncio.gather(*replays)
    replay_s = max(replay_ends) - replay_started
    exact = all(set(g) == set(ids) and max(g.values()) == 1 for g in got + again)
    print(f"baseline: {args.subscribers} raw Kafka consumers reading the same events ...", flush=True)
    raw_s = await raw_consumers(bootstrap, args.subscribers, args.events, args.timeout)
    delivered = args.subscribers * args.events
    return {
        "subscribers": args.subscribers,
        "events": args.events,
        "publish_per_s": len(ids) / published_s,
        "delivered_per_s": delivered / delivered_s,
        "first_publish_to_last_delivery_s": delivered_s,
        "replay_delivered_per_s": delivered / replay_s,
        "raw_consumers_per_s": delivered / raw_s,
        "exact": exact,
    }


def main() -> int:
    sigterm_as_exit()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--publishers", type=int, default=32, help="concurrent publishing connections")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="ndxp-events-bench-") as tmp,
        kafka_bootstrap(Path(tmp)) as bootstrap,
        running_platform(Path(tmp), bootstrap, args.workers) as (base, _),
    ):
        result = uvloop.run(run(base, bootstrap, args))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(
        f"\n{result['subscribers']} subscribers × {result['events']} events: published"
        f" {result['publish_per_s']:.0f}/s; delivered live {result['delivered_per_s']:.0f} events/s in all;"
        f" replayed from the backlog {result['replay_delivered_per_s']:.0f} events/s"
        f" (raw Kafka consumers: {result['raw_consumers_per_s']:.0f}/s,"
        f" {result['replay_delivered_per_s'] / result['raw_consumers_per_s']:.0%});"
        f" each stream got each event once: {result['exact']}"
    )
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
