"""Limit sweep: a client at 80% and at 150% of its rate limit, over 1, 8, 32 and 128 connections.

A client's rate limit is the client's, however its calls reach the gateway: through one instance's
2 workers (its connections landing on either), after one of those workers is restarted, and through
2 instances (its connections spread over both, as a load balancer would). For each setup, number of
connections and load it prints the offered and admitted rate (any answer but 429 and 5xx: the
service's own 404 is admitted), the refusals (429) and the admitted rate as a share of the limit.
The first ``--warmup`` seconds of each window are not measured (the bucket's burst of one second's
calls drains there).

Targets: at 80% no refusal; at 150% admitted within 5% of the limit. Exit status 1 if one is missed.

    .venv/bin/python loadtests/limits.py                      # ~6 minutes
    .venv/bin/python loadtests/limits.py --connections 1,32 --seconds 6 --setups workers

Starts its own 1-node Kafka unless ``NDXP_KAFKA_BOOTSTRAP`` names one; loopback only; every window
bounded in time and count. The client is ``langson`` calling ``bca/citizen`` with its limit set to
``--limit`` (every other client's raised, as in the benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from threading import Thread

import aiohttp
import orjson
import psutil

from broker.dev.ports import free_port
from broker.lifecycle import sigterm_as_exit
from loadtests.bench import kafka_bootstrap, running_platform
from loadtests.mix import MIX
from loadtests.running import descendants

ROOT = Path(__file__).resolve().parents[1]
CLIENT, KEY, SERVICE = "langson", "demo-langson", "bca/citizen"
LOADS = (0.8, 1.5)
SETUPS = ("workers", "restart", "instances")


@dataclass
class Window:
    setup: str
    connections: int
    load: float
    limit: float
    offered: float = 0.0
    accepted: float = 0.0
    refused: int = 0
    other: dict[str, int] | None = None

    @property
    def share(self) -> float:
        return self.accepted / self.limit

    @property
    def ok(self) -> bool:
        if self.load < 1:
            return self.refused == 0
        return abs(self.share - 1) <= 0.05


async def paced(
    urls: list[str], rate: float, connections: int, seconds: float, warmup: float
) -> tuple[float, float, int, dict[str, int]]:
    """``rate`` calls/s spread evenly over ``connections`` keep-alive connections (connection i to
    ``urls[i % len(urls)]``) for ``warmup + seconds``; (offered/s, accepted/s, refused, other
    outcomes) over the last ``seconds``."""
    make = next(m[3] for m in MIX if m[2] == SERVICE)
    rng = random.Random(7)  # synthetic identifiers
    interval = connections / rate
    start = time.monotonic() + 0.2
    measured_from, end = start + warmup, start + warmup + seconds
    sent = accepted = refused = 0
    other: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    async def connection(i: int) -> None:
        nonlocal sent, accepted, refused
        url = f"{urls[i % len(urls)]}/v1/exchange/{SERVICE}"
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) as http:
            for k in range(100_000):  # bounded in count too
                at = start + (i / connections + k) * interval
                if at >= end:
                    return
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                counts = time.monotonic() >= measured_from
                sent += counts
                try:
                    async with http.post(url, data=orjson.dumps(make(rng)), headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    if counts:
                        other[type(exc).__name__] = other.get(type(exc).__name__, 0) + 1
                    continue
                if not counts:
                    continue
                if status == 429:
                    refused += 1
                elif status < 500:  # admitted: the service's answer (a citizen not found is its 404)
                    accepted += 1
                else:
                    other[str(status)] = other.get(str(status), 0) + 1

    await asyncio.gather(*(connection(i) for i in range(connections)))
    return sent / seconds, accepted / seconds, refused, other


def _ready(url: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready within {within_s:g}s")


@contextmanager
def second_instance(tmp: Path, bootstrap: str) -> Iterator[str]:
    """Another gateway instance (2 workers) on the same Kafka and live registry."""
    port = free_port()
    env = {
        **os.environ, "NDXP_KAFKA_BOOTSTRAP": bootstrap, "NDXP_WORKERS": "2", "NDXP_LOG_LEVEL": "WARNING",
        "NDXP_INSTANCE_ID": f"limits-second-{os.getpid()}", "NDXP_ADMIN_PORT": str(free_port()),
        "NDXP_CACHE_DIR": str(tmp / "cache2"),
    }  # fmt: skip
    with (tmp / "second.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "gateway", "--port", str(port), "--workers", "2"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _ready(f"http://127.0.0.1:{port}", 60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    sigterm_as_exit()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=float, default=40.0, help="the client's rate limit (calls/s)")
    parser.add_argument("--connections", default="1,8,32,128")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per window")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per window")
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    conns = [int(c) for c in args.connections.split(",") if c]
    setups = [s for s in args.setups.split(",") if s]
    if not set(setups) <= set(SETUPS) or not conns or min(conns) < 1 or max(conns) > 512:
        parser.error(f"setups among {', '.join(SETUPS)}; connections 1..512")
    if not 1 <= args.limit <= 1000 or not 1 <= args.seconds <= 120 or not 0 <= args.warmup <= 30:
        parser.error("--limit 1..1000, --seconds 1..120, --warmup 0..30")
    results: list[Window] = []

    def run(setup: str, urls: list[str], n: int, load: float) -> None:
        w = Window(setup, n, load, args.limit)
        print(f"  {setup}: {n} connection(s) at {load:.0%} of {args.limit:g}/s ...", flush=True)
        w.offered, w.accepted, w.refused, w.other = asyncio.run(
            paced(urls, load * args.limit, n, args.seconds, args.warmup)
        )
        results.append(w)

    with tempfile.TemporaryDirectory(prefix="ndxp-limits-") as scratch:
        tmp = Path(scratch)
        with (
            kafka_bootstrap(tmp) as bootstrap,
            running_platform(tmp, bootstrap, 2, limits={CLIENT: args.limit}) as (base, up),
        ):
            print(f"platform up at {base}; {CLIENT}'s limit {args.limit:g}/s", flush=True)
            port = int(base.rsplit(":", 1)[1])
            if "workers" in setups:
                for n in conns:
                    for load in LOADS:
                        run("2 workers", [base], n, load)
            if "restart" in setups:
                # One of the two workers killed 2 s into the window; the supervisor restarts it.
                # Calls it held break (counted apart); the restarted worker must not hand out a fresh
                # share of the limit (150%).
                for n in conns:
                    for load in LOADS:
                        killer = _kill_later(up.pid, port, args.warmup + 2)
                        run("worker restart", [base], n, load)
                        killer.join()
            if "instances" in setups:
                with second_instance(tmp, bootstrap) as other:
                    time.sleep(3)  # each instance hears the other's presence within a second or two
                    for n in conns:
                        for load in LOADS:
                            # At least 2 connections: a balancer spreads connections, not one's calls.
                            run("2 instances", [base, other], max(2, n), load)
    print(f"\n{'setup':15} {'conns':>5} {'load':>5} {'offered/s':>9} {'admitted/s':>10} {'refused':>7}"
          f" {'of limit':>8}  target  not admitted")  # fmt: skip
    for w in results:
        other = ", ".join(f"{n} × {k}" for k, n in sorted((w.other or {}).items())) or "-"
        print(f"{w.setup:15} {w.connections:5d} {w.load:5.0%} {w.offered:9.1f} {w.accepted:10.1f}"
              f" {w.refused:7d} {w.share:8.1%}  {'met' if w.ok else 'MISSED':6}  {other}")  # fmt: skip
    if args.json is not None:
        rows = [{**dataclasses.asdict(w), "share": w.share, "met": w.ok} for w in results]
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(w.ok for w in results) else 1


def gateway_worker(up: int, port: int) -> int:
    """A gateway worker of ``ndxp up`` (pid ``up``): a process that listens on the gateway's ``port``
    (not the supervisor, the management API or multiprocessing's helpers)."""
    for pid in descendants(up):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if "spawn_main" not in " ".join(proc.cmdline()) or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in proc.net_connections()):
                return pid
    raise RuntimeError(f"no gateway worker listening on {port} under ndxp up")


def _kill_later(up: int, port: int, after_s: float) -> Thread:
    def kill() -> None:
        time.sleep(after_s)
        pid = gateway_worker(up, port)
        os.kill(pid, signal.SIGKILL)
        print(f"    gateway worker {pid} killed", flush=True)

    t = Thread(target=kill, daemon=True)
    t.start()
    return t


if __name__ == "__main__":
    raise SystemExit(main())
