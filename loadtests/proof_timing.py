"""Does a 404 for a foreign exchange take as long as one for an unknown id? (The audit API, on loopback.)

Builds an index of ``--leaves`` records in a temporary directory, serves the audit part's own API
(``broker.audit.api``) on 127.0.0.1, and asks ``--requests`` times, interleaved, for (a) an exchange of
another agency and (b) an id that was never seen; prints each one's median and p99 and their
difference. Bounded by ``--requests``.

    .venv/bin/python loadtests/proof_timing.py --leaves 200000 --requests 4000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from broker.audit.api import make_app
from broker.audit.index import Index, Reader
from broker.metrics import AuditMetrics
from broker.model.records import TxRecord


async def run(args: argparse.Namespace, tmp: Path) -> int:
    index = Index(tmp / "audit.sqlite")
    ids = [str(uuid.uuid4()) for _ in range(args.leaves)]
    for lo in range(0, args.leaves, 5000):
        index.begin()
        index.append([TxRecord(exchange_id=e, client="hanoi", provider="bca", service="citizen", outcome="ok",
                               status=200, t_in=1e12).encode() for e in ids[lo : lo + 5000]])  # fmt: skip
        index.add_checkpoint(lo + len(ids[lo : lo + 5000]), "unsigned, for timing\n")
        index.commit()
    index.close()
    reader = Reader(tmp / "audit.sqlite")
    server = TestServer(make_app(reader, AuditMetrics(CollectorRegistry()), "k", lambda: True, lambda: 0.0))
    await server.start_server()
    times: dict[str, list[float]] = {"foreign": [], "unknown": []}
    try:
        async with ClientSession(base_url=str(server.make_url(""))) as http:
            for i in range(args.requests):
                for kind in ("foreign", "unknown") if i % 2 else ("unknown", "foreign"):
                    eid = ids[(i * 7919) % len(ids)] if kind == "foreign" else str(uuid.uuid4())
                    t = time.perf_counter()
                    resp = await http.get(f"/exchanges/{eid}", headers={"X-NDXP-Agency": "vcb"})
                    await resp.read()
                    times[kind].append(time.perf_counter() - t)
                    assert resp.status == 404, resp.status
    finally:
        await server.close()
        reader.close()
    for kind, ts in times.items():
        ts.sort()
        median, p99 = statistics.median(ts) * 1e6, ts[int(len(ts) * 0.99)] * 1e6
        print(f"{kind:8} 404: median {median:,.0f} µs, p99 {p99:,.0f} µs")
    diff = statistics.median(times["foreign"]) - statistics.median(times["unknown"])
    print(f"difference of the medians: {diff * 1e6:+,.0f} µs over {args.requests:,} requests each")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leaves", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ndxp-timing-") as tmp:
        return asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
