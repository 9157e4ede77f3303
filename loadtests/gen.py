"""A light HTTP load generator for the benchmark: the demo exchange mix, little CPU of its own.

Locust (``locustfile.py``) is the load test developers run; it spends more
CPU per request than the gateway does, which on a small machine takes CPU
from what it measures. This generator keeps N keep-alive HTTP/1.1
connections on uvloop, each sending the next request as soon as the last
answer arrived, from request bodies made in advance with the same weighted
mix as the Locust file. It prints one JSON line: responses by status,
failures (anything but 200 and the providers' own 404), transport errors,
rps and p50/p95/p99 in ms. Bounded in time; loopback only.

With ``--async`` each user submits with ``Prefer: respond-async`` (202),
then long-polls ``GET /v1/exchanges/{id}`` (``Prefer: wait=30``) until the
exchange is finished; the latency is submit → result, and the status counted
is the finished exchange's ``http_status``.

    python loadtests/gen.py --url http://127.0.0.1:8080 --users 64 --seconds 30 [--async]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import uvloop

from loadtests.mix import MIX
from loadtests.rawkafka import summary


def requests(
    host: str,
    n: int,
    seed: int,
    *,
    respond_async: bool = False,
    only: str | None = None,
    even: list[tuple[str, str, Any]] | None = None,
) -> list[tuple[bytes, str]]:
    """``n`` ready-to-send HTTP requests drawn from the exchange mix (``only``: of that service;
    ``even``: these (key, service, body), each as often), with the caller's key."""
    rng = random.Random(seed)  # synthetic identifiers, not secrets
    if even:
        even = [e for e in even if only in (None, e[1])]
        if not even:
            raise SystemExit(f"no service {only} in the even mix")
    mix = MIX if even else [m for m in MIX if only in (None, m[2])]
    if not mix:
        raise SystemExit(f"no service {only} in the mix: {', '.join(m[2] for m in MIX)}")
    weights = [m[0] for m in mix]
    out: list[tuple[bytes, str]] = []
    for i in range(n):
        if even:
            key, service, doc = even[i % len(even)]
            body = orjson.dumps(doc)
        else:
            _, key, service, make = rng.choices(mix, weights=weights)[0]
            body = orjson.dumps(make(rng))
        head = (
            f"POST /v1/exchange/{service} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            + ("Prefer: respond-async\r\n" if respond_async else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append((head + body, key))
    return out


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    return status, await reader.readexactly(length)


async def _finished(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, key: str, accepted: bytes
) -> int:
    """Long-poll an accepted exchange until it is finished; its http_status."""
    eid = orjson.loads(accepted)["exchange_id"]
    poll = (
        f"GET /v1/exchanges/{eid} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        "Prefer: wait=30\r\n\r\n"
    ).encode()
    for _ in range(100):  # bounded: 100 long polls
        writer.write(poll)
        status, body = await _answer(reader)
        if status != 200:
            return status
        doc = orjson.loads(body)
        if doc["status"] != "pending":
            return int(doc["http_status"])
    return 0


async def run(
    url: str,
    users: int,
    seconds: float,
    seed: int = 7,
    *,
    respond_async: bool = False,
    only: str | None = None,
    rate: float | None = None,
    even: list[tuple[str, str, Any]] | None = None,
) -> dict[str, object]:
    """``rate``: requests per second in all, each user sending on its own schedule (rate/users a
    second; a user behind it sends at once, never more than one at a time); None: back to back."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    n = max(4096, 4 * len(even or ()))
    pool = requests(f"{host}:{port}", n, seed, respond_async=respond_async, only=only, even=even)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds

    async def user(i: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        k = i
        gap = users / rate if rate else 0.0
        due = loop.time() + gap * i / users  # users spread over the first gap
        try:
            while loop.time() < until:
                if gap:
                    if (wait := due - loop.time()) > 0:
                        await asyncio.sleep(wait)
                    due += gap
                    if loop.time() >= until:
                        break
                req, key = pool[k % len(pool)]
                k += users
                started = time.perf_counter()
                writer.write(req)
                status, body = await _answer(reader)
                if respond_async and status == 202:
                    status = await _finished(reader, writer, f"{host}:{port}", key, body)
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
        finally:
            writer.close()

    started = loop.time()
    await asyncio.gather(*(user(i) for i in range(users)))
    elapsed = loop.time() - started
    result: dict[str, object] = dict(summary(latencies, errors, elapsed))
    result["statuses"] = {str(k): v for k, v in sorted(statuses.items())}
    result["failures"] = sum(v for k, v in statuses.items() if k not in (200, 404))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--async", dest="respond_async", action="store_true", help="submit async, then poll")
    parser.add_argument("--only", metavar="PROVIDER/SERVICE", help="one service of the mix alone")
    parser.add_argument(
        "--even", type=Path, metavar="FILE",
        help="not the demo mix: a JSON list of [key, provider/service, body], each called as often",
    )  # fmt: skip
    args = parser.parse_args()
    even = [tuple(e) for e in orjson.loads(args.even.read_bytes())] if args.even else None
    result = uvloop.run(
        run(
            args.url,
            args.users,
            args.seconds,
            args.seed,
            respond_async=args.respond_async,
            only=args.only,
            even=even,
        )
    )
    print(orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
