"""Soak: hold a share of the measured capacity for a long while; throughput, p99, memory per part.

Starts a local Kafka (or uses NDXP_KAFKA_BOOTSTRAP) and ``ndxp up`` with the
load-test limits, measures the capacity (the demo mix back to back from
``--users`` connections for ``--probe`` seconds), then holds ``--share`` of it
(paced, the same connections) for ``--minutes``, in intervals of
``--interval`` seconds. After each interval it prints one line: exchanges/s,
p99, failures and the resident memory (RSS) of every part (the Kafka JVM,
gateway workers, adapters, counter, keeper, backends). At the end, it prints
each part's memory growth from the end of the first interval (the warm-up)
to the last, in MB and MB/hour (a least-squares slope), and whether the
count is exact (``/v1/stats`` moved by exactly the answers received).

    .venv/bin/python loadtests/soak.py                          # 30 minutes at half capacity
    .venv/bin/python loadtests/soak.py --minutes 2 --interval 10 --json soak.json

Loopback only; bounded (at most 180 minutes). Exit status 1 if the count is
not exact or more than 1% of the calls failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import uvloop

from loadtests.bench import PARTS, kafka_bootstrap, platform_parts, running_platform, settled_total
from loadtests.gen import run

MAX_MINUTES = 180.0


def rss_mb(parts: dict[str, list[int]]) -> dict[str, float]:
    """Resident memory of each part, MB (a process gone counts 0)."""
    out: dict[str, float] = {}
    for part, pids in parts.items():
        total = 0
        for pid in pids:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.NoSuchProcess:
                continue
        out[part] = round(total / 2**20, 1)
    return out


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per hour (0 for fewer than 2 points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mx) * (v - my) for t, v in points) / var * 3600


def growth(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each part's memory from the end of the first interval (warm-up) to the last sample."""
    steady = samples[1:] if len(samples) > 2 else samples
    out: dict[str, dict[str, float]] = {}
    for part in samples[0]["rss_mb"]:
        points = [(s["at_s"], s["rss_mb"][part]) for s in steady]
        if not any(v for _, v in points):
            continue
        out[part] = {
            "first_mb": points[0][1],
            "last_mb": points[-1][1],
            "growth_mb": round(points[-1][1] - points[0][1], 1),
            "mb_per_hour": round(slope_per_hour(points), 1),
        }
    return out


def soak(base: str, up_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    print(f"capacity: the demo mix back to back from {args.users} connections for {args.probe:g}s ...",
          flush=True)  # fmt: skip
    probe = uvloop.run(run(base, args.users, args.probe))
    capacity = float(probe["rps"])  # type: ignore[arg-type]
    rate = capacity * args.share
    print(f"capacity {capacity:,.0f} exchanges/s; holding {rate:,.0f}/s ({args.share:.0%}) for "
          f"{args.minutes:g} min", flush=True)  # fmt: skip
    before = settled_total(base)
    samples: list[dict[str, Any]] = []
    answered = failed = 0
    started = time.monotonic()
    end = started + args.minutes * 60
    while (left := end - time.monotonic()) > 1:
        result = uvloop.run(run(base, args.users, min(args.interval, left), rate=rate))
        statuses: dict[str, int] = result["statuses"]  # type: ignore[assignment]
        answered += statuses.get("200", 0) + statuses.get("404", 0)
        failed += int(result["failures"]) + int(result["errors"])  # type: ignore[call-overload]
        sample = {
            "at_s": round(time.monotonic() - started, 1),
            "rps": round(float(result["rps"]), 1),  # type: ignore[arg-type]
            "p99_ms": round(float(result["p99"]), 1),  # type: ignore[arg-type]
            "failed": int(result["failures"]) + int(result["errors"]),  # type: ignore[call-overload]
            "rss_mb": rss_mb(platform_parts(up_pid)),
        }
        samples.append(sample)
        memory = "  ".join(f"{p} {v:,.0f}" for p, v in sample["rss_mb"].items() if v)
        print(f"{sample['at_s']:7.0f}s  {sample['rps']:7,.0f}/s  p99 {sample['p99_ms']:6.1f} ms  "
              f"failed {sample['failed']}  RSS MB: {memory}", flush=True)  # fmt: skip
    counted = settled_total(base) - before
    return {
        "capacity_rps": round(capacity, 1),
        "rate": round(rate, 1),
        "minutes": args.minutes,
        "answered": answered,
        "failed": failed,
        "counted": counted,
        "exact": counted == answered,
        "samples": samples,
        "growth": growth(samples) if samples else {},
    }


def report(result: dict[str, Any]) -> None:
    print(f"\nanswered {result['answered']:,}, counted {result['counted']:,} "
          f"({'exact' if result['exact'] else 'NOT EXACT'}), failed {result['failed']:,}")  # fmt: skip
    print(f"{'part':10} {'first MB':>9} {'last MB':>8} {'growth MB':>10} {'MB/hour':>8}")
    for part in PARTS:
        if (g := result["growth"].get(part)) is not None:
            print(f"{part:10} {g['first_mb']:9,.1f} {g['last_mb']:8,.1f} {g['growth_mb']:10,.1f} "
                  f"{g['mb_per_hour']:8,.1f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per sample")
    parser.add_argument("--share", type=float, default=0.5, help="of the measured capacity")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--probe", type=float, default=20.0, help="seconds measuring the capacity")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    if not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes: more than 0, at most {MAX_MINUTES:g}")
    if not 0 < args.share <= 1:
        parser.error("--share: a fraction of the capacity, more than 0, at most 1")
    if args.interval <= 0 or args.probe <= 0 or args.users < 1:
        parser.error("--interval, --probe and --users are positive")
    with tempfile.TemporaryDirectory(prefix="ndxp-soak-") as tmp_name:
        tmp = Path(tmp_name)
        with kafka_bootstrap(tmp) as bootstrap, running_platform(tmp, bootstrap, args.workers) as (base, up):
            result = soak(base, up.pid, args)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    failed_share = result["failed"] / max(1, result["answered"] + result["failed"])
    return 0 if result["exact"] and failed_share <= 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
