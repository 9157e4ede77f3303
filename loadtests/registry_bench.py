"""Benchmark: the live registry at national scale, in one run.

Starts a local Apache Kafka (or uses NDXP_KAFKA_BOOTSTRAP), then:

1. **bulk import**: a registry of ``--agencies`` agencies (one key each) and
   ``--rights`` rights over the demo's contracts, checked and written with
   ``ndxp registry import``'s code (one transaction); the time to check it,
   write it, and for a part that starts afterwards to read it all;
2. **memory**: bytes the registry holds in a part (tracemalloc of the
   follower's state), per agency (its key and its rights included);
3. **apply latency**: ``--changes`` changes (an agency's rate limit, one at a
   time, as the management API writes them) and, for each, the time from
   the change being written to a second part (its own follower, its own
   consumer) having applied it: p50, p99, max;
4. **cost per exchange**: CPU time of what an exchange asks of the registry
   (authenticate its key, check its right) with the 13 demo agencies and
   with the bulk registry, on the same machine in the same run.

Everything stays on 127.0.0.1; every loop is bounded in count and time.

    .venv/bin/python -m loadtests.registry_bench --agencies 10000 --rights 100000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import orjson
import uvloop
import yaml

from broker.admin.cli import import_file
from broker.contracts.catalog import Catalog
from broker.contracts.live import Entry, LiveRegistry
from broker.contracts.registry import Registry, hash_key, read_yaml
from broker.kafka.registry import Proposal, RegistryFollower, RegistryWriter, new_change
from broker.lifecycle import sigterm_as_exit
from broker.settings import Settings
from loadtests.bench import kafka_bootstrap

ROOT = Path(__file__).resolve().parents[1]


def bulk_registry(agencies: int, rights: int) -> dict[str, Any]:
    """The demo registry plus ``agencies`` client agencies sharing ``rights`` rights (deterministic)."""
    raw: dict[str, Any] = read_yaml(ROOT / "deploy" / "registry.yaml")
    services = [s.key for s in Catalog.load(ROOT / "schemas")]
    for i in range(agencies):
        aid = f"a{i:05d}"
        raw["agencies"].append({"id": aid, "code": f"X{i:05d}", "name": f"Agency {i}", "rate_limit": 50,
                                "keys_sha256": [hash_key(f"key-{aid}")]})  # fmt: skip
        per = rights // agencies + (1 if i < rights % agencies else 0)
        # Each right its own document: a service, then (past the catalog's size) a pinned version 1.
        picked = [services[(i + j) % len(services)] for j in range(per)]
        raw["rights"][aid] = [name if j < len(services) else f"{name}@1" for j, name in enumerate(picked)]
    return raw


def auth_cost_us(registry: Registry, keys: list[str], rounds: int) -> float:
    """CPU µs of one exchange's registry questions: its key, then its right."""
    started = time.process_time()
    for i in range(rounds):
        agency = registry.authenticate(keys[i % len(keys)])
        assert agency is not None
        registry.allowed(agency.id, "bca", "citizen", 1)
    return (time.process_time() - started) / rounds * 1e6


async def run(bootstrap: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env().replace(kafka_bootstrap=bootstrap, topic_prefix=prefix)
    raw = bulk_registry(args.agencies, args.rights)
    path = tmp / "bulk.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    out: dict[str, Any] = {
        "agencies": len(raw["agencies"]),
        "rights": sum(len(v) for v in raw["rights"].values()),
    }
    print(f"bulk registry: {out['agencies']} agencies, {out['rights']} rights", flush=True)

    started = time.perf_counter()
    written = await import_file(settings, path, replace=False, schemas=ROOT / "schemas")
    out["import_s"] = time.perf_counter() - started
    out["documents"] = written

    started = time.perf_counter()
    reader = RegistryFollower(settings, part="bench")
    await reader.start()
    out["part_start_s"] = time.perf_counter() - started
    tracemalloc.start()  # a second part, traced (tracing slows it: not the one timed)
    before = tracemalloc.get_traced_memory()[0]
    traced = RegistryFollower(settings, part="bench-traced")
    await traced.start()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    await traced.stop()
    out["memory_mb"] = held / 1e6
    out["bytes_per_agency"] = held / out["agencies"]
    print(f"imported in {out['import_s']:.1f}s; a starting part reads it in {out['part_start_s']:.1f}s, "
          f"holding {out['memory_mb']:.0f} MB ({out['bytes_per_agency']:.0f} B per agency)")  # fmt: skip

    lags: list[float] = []
    seen: dict[int, float] = {}
    applied = asyncio.Event()

    def on_change(_: list[Entry]) -> None:
        seen.setdefault(reader.live.rev("agency", "a00000"), time.time())
        applied.set()

    reader.listeners.append(on_change)
    admin = RegistryFollower(settings, part="bench-admin")
    await admin.start()
    writer = RegistryWriter(settings, admin)
    try:
        for i in range(args.changes):

            def decide(live: LiveRegistry, i: int = i) -> Proposal:
                change = new_change("bench", "agency.update", "agency/a00000")
                doc = {**(live.doc("agency", "a00000") or {}), "rate_limit": 100 + i}
                entry = Entry(kind="agency", id="a00000", rev=live.rev("agency", "a00000") + 1, doc=doc,
                              change_id=change.change_id, at=change.at, actor="bench")  # fmt: skip
                return Proposal(entries=[entry], change=change)

            written_at = time.time()
            proposal = await writer.write(decide)
            assert proposal is not None
            rev = proposal.entries[0].rev
            async with asyncio.timeout(10):
                while rev not in seen:
                    applied.clear()
                    await applied.wait()
            lags.append(seen[rev] - written_at)
    finally:
        await writer.stop()
        await admin.stop()
    lags.sort()
    out["apply_p50_ms"] = statistics.median(lags) * 1000
    out["apply_p99_ms"] = lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000
    out["apply_max_ms"] = lags[-1] * 1000
    print(f"{len(lags)} changes applied by another part: p50 {out['apply_p50_ms']:.0f} ms, "
          f"p99 {out['apply_p99_ms']:.0f} ms, max {out['apply_max_ms']:.0f} ms", flush=True)  # fmt: skip

    demo = Registry.load(ROOT / "deploy" / "registry.yaml", Catalog.load(ROOT / "schemas"))
    demo_keys = ["demo-hanoi", "demo-vneid", "demo-dvcqg"]
    # Clients that may call bca/citizen in both: the same question, answered yes (1,000 distinct bulk
    # keys: a national platform's callers are many, so its lookups are not all in the CPU's cache).
    bulk = reader.live.registry
    holders = [f"a{i:05d}" for i in range(args.agencies) if bulk.allowed(f"a{i:05d}", "bca", "citizen", 1)]
    bulk_keys = [f"key-{aid}" for aid in holders[: max(1, min(1000, len(holders)))]]
    small = [auth_cost_us(demo, demo_keys, args.rounds) for _ in range(3)]
    same_callers = [auth_cost_us(reader.live.registry, demo_keys, args.rounds) for _ in range(3)]
    large = [auth_cost_us(reader.live.registry, bulk_keys, args.rounds) for _ in range(3)]
    await reader.stop()
    out["auth_us_13"] = min(small)
    out["auth_us_bulk_same_callers"] = min(same_callers)
    out["auth_us_bulk"] = min(large)
    print(f"an exchange's key and right check: {out['auth_us_13']:.2f} µs with 13 agencies; with "
          f"{out['agencies']}: {out['auth_us_bulk_same_callers']:.2f} µs for the same 3 callers, "
          f"{out['auth_us_bulk']:.2f} µs over {len(bulk_keys)} callers, best of 3")  # fmt: skip
    return out


def main() -> int:
    sigterm_as_exit()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agencies", type=int, default=10_000)
    parser.add_argument("--rights", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=200, help="changes whose apply latency is measured")
    parser.add_argument("--rounds", type=int, default=200_000, help="auth checks per timing")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="ndxp-registry-bench-") as tmp,
        kafka_bootstrap(Path(tmp)) as bootstrap,
    ):
        result = uvloop.run(run(bootstrap, args, Path(tmp)))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if args.json is not None:
        args.json.write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
