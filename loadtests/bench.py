"""Benchmark: the exchange path under Locust, against the gateway's own HTTP baseline.

Starts `ndxp up` on a free loopback port (its own Kafka unless
NDXP_KAFKA_BOOTSTRAP is set), runs Locust headless twice for a bounded time —
first ``GET /healthz`` (HTTP only: the baseline), then the exchange mix of
``locustfile.py`` — and prints throughput, latency percentiles, failures and
the projected exchanges per day. Nothing leaves 127.0.0.1.

    .venv/bin/python loadtests/bench.py [--users 64] [--seconds 30] [--workers 1]
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _locust(host: str, users: int, seconds: int, mode: str, out: Path) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / mode
    env = {**os.environ, "NDXP_LOAD_MODE": mode, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-H", host,
         "-u", str(users), "-r", str(users), "--run-time", f"{seconds}s", "--stop-timeout", "10",
         "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"],
        env=env, check=False, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    with open(f"{prefix}_stats.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    with open(f"{prefix}_failures.csv", newline="") as fh:
        for failure in sorted(csv.DictReader(fh), key=lambda r: -int(r["Occurrences"]))[:5]:
            print(f"  {mode} failure x{failure['Occurrences']}: {failure['Name']}: {failure['Error'][:160]}")
    return {
        "requests": float(row["Request Count"]),
        "failures": float(row["Failure Count"]),
        "rps": float(row["Requests/s"]),
        "p50": float(row["50%"]),
        "p95": float(row["95%"]),
        "p99": float(row["99%"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--warmup", type=int, default=15, help="seconds of exchanges first, not measured (JIT, caches)"
    )
    args = parser.parse_args()
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="ndxp-bench-") as tmp:
        out = Path(tmp)
        log = (out / "up.log").open("wb")
        # The demo registry's per-client rate limits would answer 429 long before
        # the platform's own limits show: measure with them raised 1000-fold.
        registry = yaml.safe_load((ROOT / "deploy" / "registry.yaml").read_text())
        for agency in registry["agencies"]:
            if "rate_limit" in agency:
                agency["rate_limit"] *= 1000
        (out / "registry.yaml").write_text(yaml.safe_dump(registry, allow_unicode=True))
        env = {
            **os.environ,
            "NDXP_WORKERS": str(args.workers),
            "NDXP_LOG_LEVEL": "WARNING",
            "NDXP_REGISTRY": str(out / "registry.yaml"),
        }
        up = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "up", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while b"platform up" not in (out / "up.log").read_bytes():
                if up.poll() is not None or time.monotonic() > deadline:
                    print((out / "up.log").read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.3)
            host = f"http://127.0.0.1:{port}"
            print(f"platform up at {host} ({args.workers} gateway worker(s)); "
                  f"{args.users} users, {args.seconds}s per run", flush=True)  # fmt: skip
            if args.warmup:
                print(f"warming up for {args.warmup}s ...", flush=True)
                _locust(host, args.users, args.warmup, "exchange", out / "warmup-")
            results = {}
            for mode in ("health", "exchange"):
                print(f"running {mode} ...", flush=True)
                results[mode] = _locust(host, args.users, args.seconds, mode, out)
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(60)
            log.close()
    print(f"\n{'run':10} {'requests':>9} {'fail':>6} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}")
    for mode, r in results.items():
        print(
            f"{mode:10} {r['requests']:9.0f} {r['failures']:6.0f} {r['rps']:8.1f} "
            f"{r['p50']:7.0f} {r['p95']:7.0f} {r['p99']:7.0f}"
        )
    ex = results["exchange"]
    print(f"\nexchange throughput = {ex['rps'] / results['health']['rps']:.1%} of the HTTP-only baseline")
    print(f"projected exchanges per day at this rate: {ex['rps'] * 86400 / 1e6:.1f} million")
    return 0


if __name__ == "__main__":
    sys.exit(main())
