"""The gateway's stored-exchange view without Kafka: a slim index, bounded as a whole, fair read-backs.

Documents are applied as the view's consumer hands them over; reading an evicted document back is
the one Kafka call, replaced here by a slow fake so that who waits for whom shows.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple, cast

import pytest
from aiokafka import TopicPartition

from broker.errors import Unavailable
from broker.gateway.view import ENTRY_BYTES, Evicted, ExchangeView
from broker.kafka import Batch
from broker.model.documents import H_DOC, Doc, Final, Pending, Status
from broker.model.records import Mode
from broker.settings import Settings


class Msg(NamedTuple):
    headers: list[tuple[str, bytes]]
    value: bytes
    offset: int


def _view(**budget: int) -> ExchangeView:
    view = ExchangeView(Settings.from_env({"NDXP_KAFKA_BOOTSTRAP": "127.0.0.1:9"}))
    view.budget = budget.get("budget", 1 << 30)
    return view


class Feed:
    """Documents of stored exchanges, applied to a view at increasing offsets of one partition."""

    def __init__(self, view: ExchangeView) -> None:
        self.view, self.offset, self.now = view, 0, time.time() * 1000

    def common(self, eid: str, client: str) -> dict[str, Any]:
        return {"exchange_id": eid, "client": client, "provider": "prov", "service": "echo",
                "mode": Mode.ASYNC, "t_in": self.now}  # fmt: skip

    def apply(self, *docs: Doc) -> None:
        msgs = []
        for doc in docs:
            kind = b"pending" if isinstance(doc, Pending) else b"final"
            msgs.append(Msg([(H_DOC, kind)], doc.encode(), self.offset))
            self.offset += 1
        self.view._apply(cast(Batch, {TopicPartition(self.view.topic, 0): msgs}))  # records' shape

    def pending(self, eid: str, client: str = "alice") -> Pending:
        return Pending(**self.common(eid, client), deadline_ms=int(self.now) + 60_000, user_id="u" * 128,
                       purpose="p" * 128, request_id="r-1", gateway="ndxp.replies.host-0")  # fmt: skip

    def final(self, eid: str, client: str = "alice") -> Final:
        return Final(**self.common(eid, client), t_out=self.now + 5, status=Status.DONE, http_status=200,
                     outcome="ok", body={"msg": "x" * 200})  # fmt: skip


def test_the_index_keeps_no_callers_identity_or_purpose() -> None:
    view = _view()
    feed = Feed(view)
    feed.apply(feed.pending("e1"))
    kept = view.docs["e1"]
    assert isinstance(kept, Pending)
    assert (kept.user_id, kept.purpose, kept.request_id, kept.gateway) == (None, None, None, "")
    assert kept.view()["status"] == "pending"  # what GET /v1/exchanges answers is all there
    assert view.open_for("alice") == 1


def test_the_view_stays_within_its_budget_and_forgets_only_finished_exchanges() -> None:
    view = _view(budget=1000 * ENTRY_BYTES)
    feed = Feed(view)
    feed.apply(*(feed.pending(f"open-{i}") for i in range(100)))
    for i in range(3000):  # three times what the budget holds, each finished
        feed.apply(feed.pending(f"done-{i}", "bob"), feed.final(f"done-{i}", "bob"))
    assert view.index_bytes + view.held <= view.budget
    assert all(f"open-{i}" in view.docs for i in range(100)), "an open exchange is never forgotten"
    assert "done-2999" in view.docs
    assert "done-0" not in view.docs, "the oldest finished go first"
    assert view.forgotten == 3100 - len(view.docs)
    assert sum(view.by_client.values()) == len(view.docs)


def test_near_the_budget_only_clients_above_an_even_share_are_refused() -> None:
    view = _view(budget=100 * ENTRY_BYTES)
    feed = Feed(view)
    feed.apply(*(feed.pending(f"a-{i}", "alice") for i in range(80)))
    assert view.admits("alice"), "room left: everyone is admitted"
    feed.apply(*(feed.pending(f"b-{i}", "bob") for i in range(10)))
    assert not view.admits("alice"), "alice holds 80 of 90 entries"
    assert view.admits("bob")
    assert view.admits("carol")


async def test_one_clients_read_backs_do_not_queue_another_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    view = _view()
    reads: list[str] = []

    async def new_fetcher() -> Any:
        return object()

    async def read_at(_: Any, where: Evicted) -> Doc | None:
        reads.append(where.client)
        await asyncio.sleep(0.5 if where.client == "alice" else 0.01)
        return None

    monkeypatch.setattr(view, "_new_fetcher", new_fetcher)
    monkeypatch.setattr(view, "_read_at", read_at)
    alice = [asyncio.create_task(view._read_back(Evicted("alice", 0.0, 0, i))) for i in range(6)]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await view._read_back(Evicted("bob", 0.0, 0, 99))
    assert time.monotonic() - started < 0.4, "bob waited behind alice's reads"
    assert reads.count("alice") == 1, "alice's reads go one at a time"
    for task in alice:
        task.cancel()
    await asyncio.gather(*alice, return_exceptions=True)
    assert view._reading == {}, "no lock is left behind"


async def test_a_read_back_that_cannot_start_in_time_is_503_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    view = _view()

    async def new_fetcher() -> Any:
        await asyncio.sleep(60)

    monkeypatch.setattr(view, "_new_fetcher", new_fetcher)
    monkeypatch.setattr("broker.gateway.view.READ_BACK_S", 0.2)
    with pytest.raises(Unavailable):
        await view._read_back(Evicted("alice", 0.0, 0, 1))
    assert view._reading == {}
