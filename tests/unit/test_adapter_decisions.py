"""The adapter runtime's decisions without Kafka: the reply memory, the triage of a request, the records
of a write's changes, and the at-least-once offset bookkeeping of lookups."""

from __future__ import annotations

import orjson
from aiokafka import TopicPartition

from adapters.runtime.decisions import (
    ENTRY_BYTES,
    REPLAY_GRACE_MS,
    DeadLetter,
    Expired,
    Handle,
    Replay,
    ReplyMemory,
    Turns,
    change_records,
    triage,
)
from adapters.runtime.request import Change
from broker.kafka import OffsetTracker
from broker.model.envelope import Names, Reply, ReplyOutcome, RequestMeta, now_ms
from broker.model.records import Mode, TxRecord

TP = TopicPartition("ndxp.req.prov.echo", 0)


def meta(eid: str, deadline_ms: int | None = None) -> RequestMeta:
    return RequestMeta(
        exchange_id=eid, client="alice", provider="prov", service="echo", reply_to="ndxp.reply.w0",
        deadline_ms=deadline_ms if deadline_ms is not None else now_ms() + 5_000, user_id="officer-7",
    )  # fmt: skip


def reply(eid: str) -> Reply:
    return Reply(exchange_id=eid, status=200, outcome=ReplyOutcome.OK, body=b"{}")


def sent(*replies: Reply, deadline_ms: int | None = None) -> list[tuple[Reply, int]]:
    """Replies as the adapter remembers them: with their requests' deadline (default: in 5 s)."""
    return [(r, now_ms() + 5_000 if deadline_ms is None else deadline_ms) for r in replies]


def test_the_reply_memory_answers_the_last_replies_and_forgets_the_oldest() -> None:
    memory = ReplyMemory(size=2)
    memory.remember(sent(reply("a"), reply("b")))
    memory.remember(sent(reply("a")))  # seen again: now the newest
    memory.remember(sent(reply("c")))
    assert (memory.get("a"), memory.get("b")) == (reply("a"), None)
    assert memory.get("c") == reply("c")
    assert len(memory) == 2


def test_the_reply_memory_keeps_to_its_byte_budget_too() -> None:
    big = [
        Reply(exchange_id=f"e{i}", status=200, outcome=ReplyOutcome.OK, body=b"x" * 1000) for i in range(50)
    ]
    memory = ReplyMemory(size=1_000, budget=10_000)
    memory.remember(sent(*big))
    assert 0 < memory.bytes <= 10_000
    assert len(memory) == 10_000 // (ENTRY_BYTES + 1000 + len("e49"))  # the newest that fit
    assert memory.get("e49") is not None
    assert memory.get("e0") is None  # the oldest went first
    memory.remember(sent(big[49]))  # again: counted once
    assert memory.bytes <= 10_000
    memory.remember(sent(reply("small")))
    assert memory.get("small") == reply("small")


def test_the_reply_memory_forgets_a_reply_once_its_deadline_and_the_grace_passed() -> None:
    memory = ReplyMemory(size=1_000)
    memory.remember(sent(reply("short"), deadline_ms=1_000), at_ms=0)
    memory.remember(sent(reply("long"), deadline_ms=100_000), at_ms=0)
    memory.remember(sent(reply("again"), deadline_ms=1_000), at_ms=0)
    memory.remember(sent(reply("again"), deadline_ms=50_000), at_ms=0)  # redelivered: kept to the new one
    memory.remember([], at_ms=1_000 + REPLAY_GRACE_MS - 1)
    assert len(memory) == 3, "within the grace after its deadline: still answered"
    memory.remember([], at_ms=1_000 + REPLAY_GRACE_MS)
    kept = (memory.get("short"), memory.get("again"), memory.get("long"))
    assert kept == (None, reply("again"), reply("long"))
    assert memory.bytes == 2 * (ENTRY_BYTES + 2) + len("again") + len("long")
    memory.remember([], at_ms=100_000 + REPLAY_GRACE_MS)
    assert (len(memory), memory.bytes) == (0, 0)


def test_the_reply_memory_stays_flat_under_a_steady_load() -> None:
    """A reply a millisecond for ten minutes, each with a 3 s deadline: the memory holds what the last
    deadline and grace cover, not the whole count; its heap of expiries stays as small."""
    memory = ReplyMemory(size=1_000_000)
    for t in range(0, 600_000, 10):
        memory.remember(sent(*(reply(f"{t}-{i}") for i in range(10)), deadline_ms=t + 3_000), at_ms=t)
    assert len(memory) <= 10 * (3_000 + REPLAY_GRACE_MS) // 10 + 10
    assert len(memory._expiry) <= 2 * len(memory) + 1024


def test_a_request_is_dead_lettered_replayed_skipped_or_handled() -> None:
    memory = ReplyMemory(size=10)
    memory.remember(sent(reply("seen")))
    assert isinstance(triage([("ndxp-exchange-id", None)], memory), DeadLetter)
    assert isinstance(triage([], memory), DeadLetter)
    replayed = triage(meta("seen").headers(), memory)
    assert isinstance(replayed, Replay)
    assert replayed.reply == reply("seen")
    late = meta("late", deadline_ms=1_000)
    assert isinstance(triage(late.headers(), memory, now_ms=1_000), Expired), "at its deadline: skipped"
    assert isinstance(triage(late.headers(), memory, now_ms=999), Handle)
    # An answer from memory wins over the deadline: its caller may still be waiting for it.
    memory.remember(sent(reply("late"), deadline_ms=1_000), at_ms=1_000)
    assert isinstance(triage(late.headers(), memory, now_ms=5_000), Replay)


def test_a_writes_changes_become_data_records_and_counted_events() -> None:
    names = Names("ndxp")
    m = meta("w1")
    records = change_records(
        names, "ndxp.tx", "bca", m,
        [Change("001090000111", {"address": "Hà Nội"}), Change("001090000111", {"to": "x"}, event="moved")],
    )  # fmt: skip
    data, event, counted = records
    assert (data.topic, data.key, orjson.loads(data.value)) == ("ndxp.data.bca", b"001090000111",
                                                                 {"address": "Hà Nội"})  # fmt: skip
    assert data.headers == [("ndxp-exchange-id", b"w1")]
    assert (event.topic, event.key) == ("ndxp.events.bca.moved", b"001090000111")
    sent = orjson.loads(event.value)
    assert (sent["type"], sent["exchange_id"]) == ("bca/moved", "w1")
    assert "user_id" not in sent, "the caller's officer is not fanned out to subscribers (review finding 10)"
    rec = TxRecord.decode(counted.value)
    assert (counted.topic, rec.exchange_id) == ("ndxp.tx", sent["event_id"])
    assert (rec.mode, rec.outcome) == (Mode.EVENT, "published")


def test_lookup_offsets_commit_up_to_the_oldest_request_still_in_progress() -> None:
    offsets = OffsetTracker()
    for offset in (10, 11, 12):
        offsets.fetched(TP, offset)
    assert offsets.committable() == {TP: 10}, "nothing finished: a crash redelivers all three"
    offsets.done(TP, 11)
    assert offsets.committable() == {TP: 10}, "11 is done but 10 is not: never skip 10"
    offsets.done(TP, 10)
    assert offsets.committable() == {TP: 12}
    offsets.committed({TP: 12})
    assert offsets.committable() == {}, "only what moved since the last commit"
    offsets.done(TP, 12)
    assert offsets.committable() == {TP: 13}
    assert offsets.in_progress() == 0
    offsets.fetched(TP, 13)
    offsets.forget([TP])  # revoked: the next member continues from the committed offset
    assert offsets.committable() == {}


def test_turns_keep_a_busy_service_to_its_share_and_let_the_others_run() -> None:
    turns: Turns[str] = Turns(total=3, per_service=2)
    far = now_ms() + 60_000
    assert [turns.admit("slow", f"s{i}", far) for i in range(4)] == [True, True, False, False]
    # The slow service is at its share: another service's request runs at once, past the queue.
    assert turns.admit("fast", "f0", far)
    assert not turns.admit("fast", "f1", far)  # all 3 run: it waits too
    turns.done("fast")
    # A freed place goes to what waits, in order; the slow service is still at its share.
    assert turns.ready(now_ms()) == [("fast", "f1")]
    turns.done("slow")
    assert turns.ready(now_ms()) == [("slow", "s2")]
    assert turns.ready(now_ms()) == []
    assert turns.running == {"slow": 2, "fast": 1}
    assert turns.running_total == 3


def test_turns_start_a_waiting_request_past_its_deadline_at_once_and_drop_revoked_ones() -> None:
    turns: Turns[str] = Turns(total=8, per_service=1)
    now = now_ms()
    assert turns.admit("slow", "running", now + 60_000)
    for item, deadline in (("late", now - 1), ("later", now + 60_000), ("gone", now + 60_000)):
        assert not turns.admit("slow", item, deadline)
    # Past its deadline: it starts whatever the limit (to be counted as expired); the next one waits.
    assert turns.ready(now) == [("slow", "late")]
    # One past its deadline behind a live one: started by the sweep, not left behind it.
    assert not turns.admit("slow", "late-behind", now - 1)
    assert turns.ready(now) == []
    assert turns.expired(now) == [("slow", "late-behind")]
    assert turns.expired(now) == []
    assert turns.drop(lambda item: item != "gone") == 1
    assert [w[0] for w in turns.waiting["slow"]] == ["later"]
    assert turns.drop(lambda item: False) == 1
    assert not turns.waiting
