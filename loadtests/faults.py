"""Fault suite: one fault at a time under steady load; nothing answered goes uncounted.

Starts a local Apache Kafka (3 nodes by default; replication factor 3,
min.insync.replicas 2) and `ndxp up` on it with 2 gateway workers, then for
each fault: steady bounded load of unique exchanges from ``--users``
keep-alive connections, the fault after ``--before`` seconds, the fault's
end (restart, SIGCONT), and ``--after`` seconds more. Per fault it prints:
calls answered (the provider's answer: 200, or its own 404), answered but
not counted (must be 0), counted twice (must be 0), counts lost (the
totals moved by less than the exchanges newly counted; must be 0), failed calls (any other
status or a broken connection), and seconds from the fault's end to the
first success. Counted exchanges are read from the counter's own record of
them (``<stats topic>.seen-batches``). Loopback only; every phase bounded.

    .venv/bin/python loadtests/faults.py                       # all faults, ~5 minutes
    .venv/bin/python loadtests/faults.py --nodes 1 --faults adapters,gateway-worker --before 3 --after 8

Under ``sse-kafka-down`` (every broker stopped 10 s, as ``kafka-down``) an event stream stays open
and its provider publishes an event every 50 ms throughout: it prints what was published (and refused
while Kafka was down), what the stream delivered, missing or twice (both must be 0), and how often
the stream had to be opened again (with ``Last-Event-ID``, where it was).

Exit status 1 if any fault lost or double-counted an exchange, or the stream lost or repeated an event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from broker.dev.localkafka import LocalKafka
from broker.errors import KafkaUnavailable
from broker.kafka import read_to_end, topic_partitions
from broker.lifecycle import sigterm_as_exit
from broker.model.records import Mode, TxRecord
from broker.settings import Settings
from loadtests.bench import running_platform, settled_total, stats_today
from loadtests.gen import requests
from loadtests.running import cmdline, descendants

ROOT = Path(__file__).resolve().parents[1]

FAULTS = (
    "broker-kill", "gateway-worker", "adapters", "counter", "keeper", "broker-pause", "kafka-down",
    "sse-kafka-down", "broker-lost",
)  # fmt: skip
"""In the order they run: ``broker-lost`` (a broker SIGKILLed and never restarted) last, as the rest of
a run would be on two of three brokers."""
STREAM = ("bca", "address_changed", "demo-bca", "demo-hanoi")
"""The event stream the ``sse-kafka-down`` fault watches: provider, type, the publisher's key and a
subscriber's key (deploy/registry.yaml)."""
WINDOW_S = 10.0
"""A fault's window (for its failed share and p99): from its injection to its end, or this long after
the injection if it ends sooner (a SIGKILL ends at once; its effects do not)."""


@dataclass
class Phase:
    name: str
    answered: set[str] = field(default_factory=set)
    failed: int = 0
    fault_end: float = 0.0
    first_ok_after: float | None = None
    statuses: dict[int, int] = field(default_factory=dict)
    injected: float = 0.0
    first_ok_since_injected: float | None = None
    """Seconds from the injection to the first success of a call sent after it."""
    calls: list[tuple[float, float, str]] = field(default_factory=list)
    """(sent at, seconds taken, outcome: "ok" or the failure's kind) of every call."""

    def fail(self, sent: float, kind: str) -> None:
        self.failed += 1
        self.calls.append((sent, time.monotonic() - sent, kind))

    def window(self) -> tuple[float, float]:
        return self.injected, max(self.fault_end, self.injected + WINDOW_S)

    def during(self) -> dict[str, object]:
        """Calls sent in the fault's window: how many, failed by kind, p99 latency."""
        lo, hi = self.window()
        inside = [(took, kind) for sent, took, kind in self.calls if lo <= sent < hi]
        kinds: dict[str, int] = {}
        for _, kind in inside:
            if kind != "ok":
                kinds[kind] = kinds.get(kind, 0) + 1
        took = sorted(t for t, _ in inside)
        p99 = took[min(len(took) - 1, int(len(took) * 0.99))] if took else None
        return {
            "window_calls": len(inside),
            "window_failed": sum(kinds.values()),
            "window_failed_by_kind": kinds,
            "window_p99_ms": None if p99 is None else round(p99 * 1000),
        }


async def load(url: str, users: int, until: float, phase: Phase, stop: asyncio.Event) -> None:
    """Unique exchanges back to back on ``users`` connections until ``stop`` is set (or ``until``).

    Each user finishes the call in hand and returns: the load is ended by the
    event, never by cancelling it. (Python 3.11's ``wait_for`` can swallow a
    cancellation that races with its result; a user that survived so went on
    answering exchanges after the phase's figures were taken, which once
    showed as an exchange "not counted".)
    """
    host, port = url.split("//")[1].split(":")
    pool = requests(f"{host}:{port}", 2048, seed=int(time.time()))

    def going() -> bool:
        return not stop.is_set() and time.monotonic() < until

    async def user(i: int) -> None:
        k = i
        while going():
            sent = time.monotonic()
            try:
                async with asyncio.timeout(5):
                    reader, writer = await asyncio.open_connection(host, int(port))
            except (OSError, TimeoutError):
                phase.fail(sent, "connect")
                await asyncio.sleep(0.2)
                continue
            try:
                while going():
                    sent = time.monotonic()
                    writer.write(pool[k % len(pool)][0])
                    k += users
                    async with asyncio.timeout(30):
                        head = await reader.readuntil(b"\r\n\r\n")
                        status = int(head[9:12])
                        length, eid = 0, ""
                        for line in head.split(b"\r\n"):
                            low = line.lower()
                            if low.startswith(b"content-length:"):
                                length = int(line[15:])
                            elif low.startswith(b"x-ndxp-exchange-id:"):
                                eid = line[19:].strip().decode()
                        await reader.readexactly(length)
                    phase.statuses[status] = phase.statuses.get(status, 0) + 1
                    if status in (200, 404):
                        phase.answered.add(eid)
                        now = time.monotonic()
                        phase.calls.append((sent, now - sent, "ok"))
                        if phase.fault_end and phase.first_ok_after is None and now >= phase.fault_end:
                            phase.first_ok_after = now - phase.fault_end
                        if (
                            phase.injected
                            and phase.first_ok_since_injected is None
                            and sent >= phase.injected
                        ):
                            phase.first_ok_since_injected = now - phase.injected
                    else:
                        phase.fail(sent, str(status))
            except (OSError, asyncio.IncompleteReadError) as exc:
                phase.fail(sent, "disconnect" if isinstance(exc, asyncio.IncompleteReadError) else "socket")
                await asyncio.sleep(0.1)
            except TimeoutError:
                phase.fail(sent, "no answer in 30s")
                await asyncio.sleep(0.1)
            except ValueError:
                phase.fail(sent, "bad answer")
                await asyncio.sleep(0.1)
            finally:
                writer.close()

    await asyncio.gather(*(user(i) for i in range(users)))


@dataclass
class Watched:
    """An event stream under a fault: what was published (accepted with 202), what the stream gave."""

    accepted: list[str] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)
    reopened: int = 0
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def result(self, published: int, delivered: int) -> dict[str, object]:
        """With what /v1/stats counted meanwhile: ``published`` events of the type, ``delivered`` to
        the subscriber (both must be what reached Kafka and the stream: counted exactly)."""
        got, wanted = set(self.received), set(self.accepted)
        return {
            "counted_published": published,
            "counted_delivered": delivered,
            "count_exact": published == len(got) and delivered == len(self.received),
            "published": len(self.accepted),
            "publish_refused": self.refused,
            "received": len(self.received),
            "missing": len(wanted - got),
            "twice": len(self.received) - len(got),
            # A publish answered 503 may still reach Kafka once it is back (aiokafka sends what it
            # could not deliver in time): delivered although refused, reported, never an error.
            "unasked": len(got - wanted),
            "reopened": self.reopened,
        }


async def watch_stream(url: str, watched: Watched, stop: asyncio.Event) -> None:
    """Subscribe to :data:`STREAM` and read it until ``stop`` is set and every accepted event arrived
    (bounded: 60 s after ``stop``). A stream that ends is opened again with ``Last-Event-ID``, after
    its ``retry:`` hint, as an SSE client does."""
    provider, type_, _, subscriber = STREAM
    path = f"/v1/events/{provider}/{type_}"
    last_id, retry_s, give_up = "", 1.0, 0.0

    def done() -> bool:
        nonlocal give_up
        if not stop.is_set():
            return False
        give_up = give_up or time.monotonic() + 60
        return set(watched.accepted) <= set(watched.received) or time.monotonic() > give_up

    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=None)) as http:
        while not done():
            headers = {"Authorization": f"Bearer {subscriber}", "Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                async with http.get(path, headers=headers) as resp:
                    if resp.status == 200:
                        watched.opened.set()
                    fields: dict[str, str] = {}
                    pending = b""
                    while resp.status == 200 and not done():
                        # Bytes as they come, split into lines here: a timeout that cancels
                        # readline() mid-line would drop the part it had read (an event lost here).
                        try:
                            async with asyncio.timeout(1):
                                chunk = await resp.content.readany()
                        except TimeoutError:
                            continue
                        if not chunk:
                            break  # the gateway ended the stream: open it again where it was
                        *lines, pending = (pending + chunk).split(b"\n")
                        for raw in lines:
                            line = raw.decode()
                            if line == "":
                                if "data" in fields:
                                    last_id = fields.get("id", last_id)
                                    watched.received.append(orjson.loads(fields["data"])["event_id"])
                                fields = {}
                            elif line.startswith("retry:"):
                                retry_s = int(line[6:]) / 1000
                            elif not line.startswith(":"):
                                name, _, value = line.partition(":")
                                fields[name] = value.removeprefix(" ")
                    if done():
                        return
            except (aiohttp.ClientError, OSError):
                pass
            watched.reopened += 1
            await asyncio.sleep(retry_s)


async def publish_events(url: str, watched: Watched, stop: asyncio.Event) -> None:
    """Publish an event of :data:`STREAM` every 50 ms until ``stop`` (once the stream is open)."""
    provider, type_, publisher, _ = STREAM
    await watched.opened.wait()
    n = 0
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=5)) as http:
        while not stop.is_set():
            n += 1
            data = {
                "cccd": f"0010900{n % 100000:05d}", "moved_on": "2026-12-01",
                "address": {"street": f"Số {n}", "ward": "Phường Cửa Nam", "province": "Hà Nội"},
                "registration_id": f"TT{n:012X}",
            }  # fmt: skip
            try:
                async with http.post(f"/v1/events/{provider}/{type_}", json=data,
                                     headers={"Authorization": f"Bearer {publisher}"}) as resp:  # fmt: skip
                    if resp.status == 202:
                        watched.accepted.append((await resp.json())["event_id"])
                    else:
                        watched.refused[str(resp.status)] = watched.refused.get(str(resp.status), 0) + 1
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                kind = type(exc).__name__
                watched.refused[kind] = watched.refused.get(kind, 0) + 1
            await asyncio.sleep(0.05)


def stream_counts(base: str) -> tuple[int, int]:
    """(published, delivered to the subscriber) of :data:`STREAM` in today's /v1/stats."""
    provider, type_, _, subscriber = STREAM
    stats = stats_today(base) or {}
    events = stats.get("events", {})
    name = f"{provider}/{type_}"
    return int(events.get("published", {}).get(name, 0)), int(events.get("delivered", {}).get(
        subscriber.removeprefix("demo-"), {}).get(name, 0))  # fmt: skip


async def event_record_ids(bootstrap: str, tx_topic: str) -> set[str]:
    """The ids of the transaction records that count events (publications, deliveries), not exchanges:
    /v1/stats' total is the exchanges', the events' are apart."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    ids: set[str] = set()
    try:
        for tp in await topic_partitions(consumer, tx_topic):
            for m in await read_to_end(consumer, tp):
                rec = TxRecord.decode(m.value or b"")
                if rec.mode in (Mode.EVENT, Mode.DELIVERY):
                    ids.add(rec.exchange_id)
    finally:
        await consumer.stop()
    return ids


async def counted_ids(bootstrap: str, topic: str) -> set[str]:
    """Every exchange id the counter has committed as counted."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    ids: set[str] = set()
    try:
        for m in await read_to_end(consumer, TopicPartition(topic, 0)):
            ids.update(orjson.loads(m.value or b"{}"))
    finally:
        await consumer.stop()
    return ids


async def trace_missing(bootstrap: str, missing: AbstractSet[str], tx_topic: str, group: str) -> list[str]:
    """Where each answered-but-uncounted exchange's record is: for the operator, and the note."""
    lines: list[str] = []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted")
    await consumer.start()
    try:
        for topic in (tx_topic, f"{tx_topic}.dlq"):
            try:
                tps = await topic_partitions(consumer, topic)
            except KafkaUnavailable:
                lines.append(f"{topic}: no such topic")
                continue
            for tp in tps:
                for m in await read_to_end(consumer, tp):
                    try:
                        eid = orjson.loads(m.value or b"{}").get("exchange_id")
                    except (orjson.JSONDecodeError, AttributeError):
                        continue
                    if eid in missing:
                        lines.append(f"{eid}: {topic}[{tp.partition}]@{m.offset} ts={m.timestamp}")
        grouped = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await grouped.start()
        try:
            for p in sorted(consumer.partitions_for_topic(tx_topic) or ()):
                tp = TopicPartition(tx_topic, p)
                lines.append(f"{group} committed {tx_topic}[{p}] = {await grouped.committed(tp)}")
        finally:
            await grouped.stop()
    finally:
        await consumer.stop()
    return lines


def part_pid(up: int, marker: str) -> int:
    for pid in descendants(up):
        cmd = cmdline(pid)
        if marker in cmd and "resource_tracker" not in cmd:
            return pid
    raise RuntimeError(f"no process {marker!r} under ndxp up")


def fault_actions(name: str, kafka: LocalKafka, up: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(inject, end) of one fault; ``end`` returns once the fault is over."""
    victim = max(kafka.pids)

    def kill(marker: str) -> Callable[[], None]:
        return lambda: os.kill(part_pid(up, marker), signal.SIGKILL)

    def signal_brokers(sig: int, nodes: list[int]) -> None:
        for node in nodes:
            if node in kafka.pids:  # a lost broker is not there to signal
                os.kill(kafka.pids[node], sig)

    def lose_broker() -> None:
        kafka.kill_node(victim)  # never restarted: the rest of the run is on the others

    def restart_broker() -> None:
        time.sleep(10)
        kafka.start_node(victim)  # its process is dead: start_node starts it again
        kafka.wait_ready(kafka.node_count)

    def resume(nodes: list[int]) -> Callable[[], None]:
        def end() -> None:
            time.sleep(10)
            signal_brokers(signal.SIGCONT, nodes)

        return end

    everyone = sorted(kafka.pids)
    actions: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "broker-kill": (lambda: signal_brokers(signal.SIGKILL, [victim]), restart_broker),
        "gateway-worker": (kill("multiprocessing.spawn"), lambda: None),
        "adapters": (kill("broker.cli adapter"), lambda: None),
        "counter": (kill("broker.cli counter"), lambda: None),
        "keeper": (kill("broker.cli keeper"), lambda: None),
        "broker-lost": (lose_broker, lambda: None),
        "broker-pause": (lambda: signal_brokers(signal.SIGSTOP, [victim]), resume([victim])),
        "kafka-down": (lambda: signal_brokers(signal.SIGSTOP, everyone), resume(everyone)),
        "sse-kafka-down": (lambda: signal_brokers(signal.SIGSTOP, everyone), resume(everyone)),
    }
    return actions[name]


async def run_phase(
    name: str,
    base: str,
    bootstrap: str,
    settings: Settings,
    kafka: LocalKafka,
    up: int,
    args: argparse.Namespace,
) -> dict[str, object]:
    phase = Phase(name)
    seen_topic = f"{settings.stats_topic}.seen-batches"  # the counter's record of what it counted
    total0 = settled_total(base, within_s=90, quiet_s=3)
    seen0 = await counted_ids(bootstrap, seen_topic)
    inject, end = fault_actions(name, kafka, up)
    started = time.monotonic()
    stop = asyncio.Event()
    loader = asyncio.create_task(load(base, args.users, started + args.before + 60 + args.after, phase, stop))
    watched, streams, counts0 = None, [], (0, 0)
    if name == "sse-kafka-down":
        counts0 = stream_counts(base)  # an open event stream through the outage, events published throughout
        watched = Watched()
        streams = [asyncio.create_task(watch_stream(base, watched, stop)),
                   asyncio.create_task(publish_events(base, watched, stop))]  # fmt: skip
        async with asyncio.timeout(30):
            await watched.opened.wait()
    await asyncio.sleep(args.before)
    print(f"  {name}: injecting", flush=True)
    phase.injected = time.monotonic()
    inject()
    await asyncio.to_thread(end)
    phase.fault_end = time.monotonic()
    print(f"  {name}: fault over; load for {args.after}s more", flush=True)
    await asyncio.sleep(args.after)
    stop.set()
    await loader  # every user has finished its call in hand: the answered set is final
    await asyncio.gather(*streams)
    answered = frozenset(phase.answered)
    # Every answered exchange must be counted, eventually: wait (bounded) until
    # the counter has caught up with all of them, then for its totals to settle.
    deadline = time.monotonic() + 90
    seen1 = await counted_ids(bootstrap, seen_topic)
    while not answered <= seen1 and time.monotonic() < deadline:
        await asyncio.sleep(1)
        seen1 = await counted_ids(bootstrap, seen_topic)
    total1 = await asyncio.to_thread(settled_total, base, within_s=90, quiet_s=3)
    seen1 = await counted_ids(bootstrap, seen_topic)
    new_counted = seen1 - seen0
    stream: dict[str, object] = {}
    if watched is not None:  # events are counted apart from exchanges: take their records out
        new_counted -= await event_record_ids(bootstrap, settings.tx_topic)
        counts1 = stream_counts(base)
        stream["stream"] = watched.result(counts1[0] - counts0[0], counts1[1] - counts0[1])
    missing = answered - seen1
    if missing:
        print(f"  {name}: {len(missing)} answered exchange(s) not counted; where their records are:")
        for line in await trace_missing(
            bootstrap, missing, settings.tx_topic, f"{settings.stats_topic}.counter"
        ):
            print(f"    {line}", flush=True)
    return {
        "fault": name,
        "seconds": round(time.monotonic() - started, 1),
        "answered": len(answered),
        "not_counted": len(missing),
        "counted_twice": max(0, (total1 - total0) - len(new_counted)),
        # The counts' total must move by exactly the ids newly counted: less is a count lost.
        "count_lost": max(0, len(new_counted) - (total1 - total0)),
        "missing": sorted(missing)[:20],
        "failed": phase.failed,
        "recovery_s": phase.first_ok_after,
        "first_ok_s": None
        if phase.first_ok_since_injected is None
        else round(phase.first_ok_since_injected, 2),
        "statuses": phase.statuses,
        **phase.during(),
        **stream,
    }


def main() -> int:
    sigterm_as_exit()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=3, choices=(1, 3))
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--before", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=15.0)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--keep", type=Path, help="keep Kafka's data and the platform's log here")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    for f in faults:
        if f not in FAULTS:
            parser.error(f"unknown fault {f!r}; known: {', '.join(FAULTS)}")
    if args.nodes == 1 and {"broker-kill", "broker-pause", "broker-lost"} & set(faults):
        parser.error("broker faults need --nodes 3 (a 1-node cluster is all of Kafka)")
    faults.sort(key=FAULTS.index)  # broker-lost last: what follows it would run on two of three
    results = []
    with tempfile.TemporaryDirectory(prefix="ndxp-faults-") as scratch:
        tmp = str(args.keep) if args.keep is not None else scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        settings = Settings.from_env()
        kafka = LocalKafka(settings, nodes=args.nodes, data_dir=Path(tmp) / "kafka",
                           progress=lambda m: print(m, flush=True))  # fmt: skip
        bootstrap = kafka.start()
        os.environ["NDXP_WORKERS"] = "2"
        try:
            with running_platform(Path(tmp), bootstrap, workers=2) as (base, up):
                print(f"platform up at {base} on {args.nodes}-node Kafka {bootstrap}", flush=True)
                for name in faults:
                    print(f"fault {name} ...", flush=True)
                    results.append(
                        asyncio.run(run_phase(name, base, bootstrap, settings, kafka, up.pid, args))
                    )
        finally:
            kafka.stop()
    print(
        f"\n{'fault':13} {'answered':>8} {'not counted':>11} {'counted twice':>13} {'count lost':>10}"
        f" {'failed/sent in window':>22} {'p99 ms':>7} {'1st ok s':>8}  failed by kind"
    )
    for r in results:
        ok = "-" if r["first_ok_s"] is None else f"{r['first_ok_s']:.2f}"
        share = f"{r['window_failed']}/{r['window_calls']}"
        by_kind = cast(dict[str, int], r["window_failed_by_kind"])
        kinds = ", ".join(f"{n} × {k}" for k, n in sorted(by_kind.items())) or "-"
        print(
            f"{r['fault']:13} {r['answered']:8d} {r['not_counted']:11d} {r['counted_twice']:13d}"
            f" {r['count_lost']:10d} {share:>22} {r['window_p99_ms'] or '-':>7} {ok:>8}  {kinds}"
        )
    for r in results:
        if "stream" in r:
            st = cast(dict[str, object], r["stream"])
            print(
                f"{r['fault']}: the event stream: {st['published']} events published (refused while Kafka"
                f" was down: {st['publish_refused'] or 'none'}), {st['received']} received, {st['missing']}"
                f" missing, {st['twice']} twice, {st['unasked']} refused but delivered;"
                f" the stream opened again {st['reopened']} time(s); counted {st['counted_published']}"
                f" published, {st['counted_delivered']} delivered"
                f" ({'exact' if st['count_exact'] else 'NOT exact'})"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    bad = [
        r
        for r in results
        if r["not_counted"]
        or r["counted_twice"]
        or r["count_lost"]
        or not r["answered"]
        or cast(dict[str, int], r.get("stream", {})).get("missing")
        or cast(dict[str, int], r.get("stream", {})).get("twice")
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
