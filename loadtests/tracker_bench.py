"""Benchmark: the data tracker's SQLite index — how fast it indexes, how fast it answers a subject.

Builds the audit part's own index (``broker.audit.index``: tree nodes, leaves, accesses by subject) in a
temporary directory from ``--leaves`` synthetic transaction records, appended in the writer's batches,
one SQLite transaction each, exactly as the writer does. Every record names a subject (most drawn
from a large population; ``--hot`` subjects get ``--per-hot`` accesses each, spread over the whole
log). Then it asks for the hot subjects' accesses through the API's own row builder, ``--queries``
times, and prints indexing rate and query p50/p99. A query is bounded (10,000 rows); the run is bounded
by ``--leaves``. No network.

    .venv/bin/python loadtests/tracker_bench.py --leaves 10000000
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

from broker.audit.api import access_rows
from broker.audit.index import Index, Reader
from broker.model.records import TxRecord

BATCH = 5000


def _subject(n: int) -> str:
    return hashlib.sha256(b"subject %d" % n).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--population", type=int, default=2_000_000, help="distinct subjects")
    parser.add_argument("--hot", type=int, default=20, help="subjects with --per-hot accesses each")
    parser.add_argument("--per-hot", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=None, help="keep the index here (default: a temp dir)")
    parser.add_argument(
        "--reuse", action="store_true", help="only query the index an earlier run left in --dir (same --hot)"
    )
    args = parser.parse_args()
    rng = random.Random(7)
    hot_every = max(1, args.leaves // (args.hot * args.per_hot))
    with tempfile.TemporaryDirectory(prefix="ndxp-tracker-") as tmp:
        path = (args.dir or Path(tmp)) / "audit.sqlite"
        if args.reuse:
            args.leaves = 0
        index = Index(path)
        t0 = time.time() * 1000
        last = time.perf_counter()
        hot_n = 0
        done = 0
        indexing = 0.0
        """Seconds spent in the index (making the synthetic records is not the tracker's cost)."""
        while done < args.leaves:
            leaves = []
            for i in range(done, min(args.leaves, done + BATCH)):
                if i % hot_every == 0 and hot_n < args.hot * args.per_hot:
                    subject = _subject(hot_n % args.hot)
                    hot_n += 1
                else:
                    subject = _subject(args.hot + rng.randrange(args.population))
                rec = TxRecord(
                    exchange_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), client="hanoi",
                    provider="bca", service="citizen", outcome="ok", status=200, t_in=t0 + i,
                    t_out=t0 + i + 3, request_bytes=24, response_bytes=300, gateway="ndxp.reply.w0",
                    user_id="officer.7", purpose="birth registration",
                    request_sha256=hashlib.sha256(b"%d" % i).hexdigest(),
                    response_sha256=hashlib.sha256(b"r%d" % i).hexdigest(), subject=subject,
                )  # fmt: skip
                leaves.append(rec.encode())
            t = time.perf_counter()
            index.begin()
            index.append(leaves)
            index.commit(leaves_offset=done + len(leaves))
            indexing += time.perf_counter() - t
            done += len(leaves)
            if time.perf_counter() - last >= 10:
                last = time.perf_counter()
                print(f"  … {done:,} leaves indexed, {done / indexing:,.0f}/s (index time only)", flush=True)
        took = max(indexing, 1e-9)
        index.close()
        files = path.parent.glob("audit.sqlite*")
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"indexed {done:,} leaves ({hot_n:,} hot accesses) in {took:.1f}s: "
              f"{done / took:,.0f} leaves/s; index {size_mb:,.0f} MB")  # fmt: skip
        reader = Reader(path)
        times = []
        counts = set()
        for q in range(args.queries):
            t = time.perf_counter()
            rows = access_rows(reader, _subject(q % args.hot))
            times.append(time.perf_counter() - t)
            counts.add(len(rows))
        reader.close()
        times.sort()
        p50, p99 = times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"{args.queries} queries of a subject with {sorted(counts)} accesses: "
              f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
