"""Benchmark: memory of a gateway worker's stored-exchange view, per million stored exchanges.

Every gateway worker follows the whole exchanges topic and keeps an index entry per stored
exchange in retention (``broker/gateway/view.py``). This feeds one view (no Kafka: the documents
are applied as the view's consumer would hand them over) ``--count`` documents of each kind and
measures, with tracemalloc, what the view holds beyond the final documents it keeps:

- **pending**: accepted async exchanges not finished, sent with a 128-character
  ``X-NDXP-User-Id`` and purpose (the longest the gateway admits);
- **finished async**: a pending and a final document each, the final one evicted;
- **finished idempotent**: the same, with an ``Idempotency-Key`` claim.

It also checks the bound: with the budget set to half of what the index needs, the view holds at
most its budget and forgets the oldest finished exchanges only.

    .venv/bin/python -m loadtests.view_memory --count 200000
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple, cast

from aiokafka import TopicPartition

from broker.gateway.view import ENTRY_BYTES, ExchangeView
from broker.kafka import Batch
from broker.model.documents import H_DOC, Final, Pending, Status, fingerprint, idempotency_hash
from broker.model.records import Mode
from broker.settings import Settings


class Msg(NamedTuple):
    headers: list[tuple[str, bytes]]
    value: bytes
    offset: int


def documents(count: int, *, finished: bool, idempotent: bool) -> Iterator[tuple[str, bytes]]:
    """(kind, encoded document) of ``count`` stored exchanges of alice's, as the topic holds them."""
    now = time.time() * 1000
    for i in range(count):
        eid = str(uuid.uuid4())
        idem = idempotency_hash("alice", f"key-{i}") if idempotent else None
        common: dict[str, Any] = {
            "exchange_id": eid, "client": "alice", "provider": "bca", "service": "citizen",
            "mode": Mode.ASYNC, "t_in": now + i / 1000, "idempotency": idem,
            "fingerprint": fingerprint("bca", "citizen", b"{}") if idem else None,
        }  # fmt: skip
        yield "pending", Pending(
            **common, deadline_ms=int(now) + 3_600_000, request_id=f"req-{i}", user_id="u" * 128,
            purpose="p" * 128, request_bytes=40, gateway="ndxp.replies.gateway-host-0", major=1,
        ).encode()  # fmt: skip
        if finished:
            yield "final", Final(
                **common, t_out=now + i / 1000 + 5, status=Status.DONE, http_status=200, outcome="ok",
                body={"cccd": "001090012345", "full_name": "Nguyễn Văn An"},
            ).encode()  # fmt: skip


def feed(view: ExchangeView, docs: Iterator[tuple[str, bytes]], batch: int = 5000) -> None:
    tp = TopicPartition(view.topic, 0)
    messages = []
    for offset, (kind, value) in enumerate(docs):
        messages.append(Msg([(H_DOC, kind.encode())], value, offset))
        if len(messages) == batch:
            view._apply(cast(Batch, {tp: messages}))
            messages = []
    if messages:
        view._apply(cast(Batch, {tp: messages}))


def measure(settings: Settings, count: int, *, finished: bool, idempotent: bool) -> float:
    """Bytes per stored exchange the view holds, final documents held excepted."""
    view = ExchangeView(settings)
    view.budget = 1 << 40  # nothing evicted while feeding
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    feed(view, documents(count, finished=finished, idempotent=idempotent))
    # Evict every final document but the newest one (as a full view would) before measuring.
    view.budget = view.index_bytes + 1
    view._evict()
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base - view.held
    tracemalloc.stop()
    assert len(view.docs) == count
    return used / count


def bounded(settings: Settings, count: int) -> tuple[int, int, int, int]:
    """Feed twice what the budget holds: (budget, index bytes, entries kept, forgotten)."""
    view = ExchangeView(settings)
    half = count // 2
    view.budget = half * ENTRY_BYTES
    feed(view, documents(count, finished=True, idempotent=False))
    return view.budget, view.index_bytes + view.held, len(view.docs), view.forgotten


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200_000, help="stored exchanges of each kind")
    args = parser.parse_args(argv)
    settings = Settings.from_env({"NDXP_KAFKA_BOOTSTRAP": "127.0.0.1:9"})  # never contacted
    logging.getLogger("broker.gateway.view").setLevel(logging.ERROR)  # the bound's warnings
    python = sys.version.split()[0]
    print(f"view memory, {args.count:,} stored exchanges of each kind (tracemalloc, Python {python})")
    for name, finished, idempotent in (
        ("pending (128-char user id and purpose)", False, False),
        ("finished async", True, False),
        ("finished idempotent", True, True),
    ):
        per = measure(settings, args.count, finished=finished, idempotent=idempotent)
        print(f"  {name:40s} {per:7.0f} B each   {per * 1e6 / 2**20:7.0f} MiB per million")
    budget, used, kept, forgotten = bounded(settings, args.count)
    print(f"  bound: budget {budget / 2**20:.1f} MiB, held {used / 2**20:.1f} MiB, "
          f"{kept:,} kept, {forgotten:,} oldest finished forgotten")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
