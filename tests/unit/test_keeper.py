"""The keeper's decisions without Kafka: its ledger fed record by record, its callback policy, and
the one transaction helper against the in-memory fake (tests/fakes.py)."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from aiokafka import TopicPartition

from broker.errors import TransactionFenced
from broker.kafka import Outgoing, Transactions
from broker.keeper.callbacks import MAX_BACKOFF_S, after_attempt, backoff_s, headers, sign
from broker.keeper.ledger import Ledger
from broker.model.documents import GRACE_MS, CallbackState, Final, Pending, Status
from broker.model.envelope import H_ORIGIN, Reply, ReplyOutcome, reply_mac
from broker.model.records import Mode
from tests.fakes import FakeKafka

TP = TopicPartition("ndxp.exchanges", 0)
PENDING = [("ndxp-doc", b"pending")]
FINAL = [("ndxp-doc", b"final")]


def pending(eid: str, *, deadline_ms: int = 10_000, idem: str | None = None, t_in: float = 1_000.0) -> bytes:
    return Pending(
        exchange_id=eid, client="alice", provider="prov", service="echo", mode=Mode.ASYNC, t_in=t_in,
        deadline_ms=deadline_ms, idempotency=idem, fingerprint="f" if idem else None,
    ).encode()  # fmt: skip


def reply(eid: str) -> tuple[list[tuple[str, bytes | None]], bytes]:
    r = Reply(exchange_id=eid, status=200, outcome=ReplyOutcome.OK, body=b'{"msg":"x"}')
    return list(r.headers()), r.body


def final(eid: str, callback: dict[str, object] | None = None) -> bytes:
    return Final(
        exchange_id=eid, client="alice", provider="prov", service="echo", mode=Mode.ASYNC, t_in=1_000.0,
        t_out=2_000.0, status=Status.DONE, http_status=200, outcome="ok", body={"msg": "x"},
        callback=callback,
    ).encode()  # fmt: skip


def caught_up(ledger: Ledger, end: int = 0) -> Ledger:
    ledger.assigned({TP: end})
    ledger.read_to(TP, end)
    return ledger


def test_a_reply_makes_its_exchange_due_once_and_it_stays_busy_until_its_final_document() -> None:
    ledger = caught_up(Ledger())
    ledger.apply(TP, 0, PENDING, pending("a"))
    assert ledger.due(now_ms=0).finish == []
    ledger.apply(TP, 1, *reply("a"))
    work = ledger.due(now_ms=0)
    assert [o.pending.exchange_id for _, o in work.finish if o.pending] == ["a"]
    assert work.finish[0][1].reply is not None
    assert ledger.due(now_ms=0).finish == [], "handed out once: busy until its final document is read"
    ledger.apply(TP, 2, FINAL, final("a"))
    assert ledger.open[TP] == {}
    assert ledger.offsets() == {TP: 3}, "nothing open: everything read may be committed"


def test_an_exchange_without_reply_is_due_at_its_deadline_plus_the_grace() -> None:
    ledger = caught_up(Ledger())
    ledger.apply(TP, 0, PENDING, pending("a", deadline_ms=5_000))
    assert ledger.due(now_ms=5_000 + GRACE_MS - 1).finish == []
    (tp, o), = ledger.due(now_ms=5_000 + GRACE_MS).finish  # fmt: skip
    assert (tp, o.reply) == (TP, None), "expired: finished without a reply"


def test_offsets_never_pass_the_first_document_of_an_exchange_still_open() -> None:
    ledger = caught_up(Ledger())
    ledger.apply(TP, 0, PENDING, pending("old"))
    ledger.apply(TP, 1, PENDING, pending("new"))
    ledger.apply(TP, 2, FINAL, final("new"))
    assert ledger.offsets() == {TP: 0}, "a restarted keeper must read 'old' again"
    ledger.apply(TP, 3, FINAL, final("old"))
    assert ledger.offsets() == {TP: 4}


def test_nothing_is_done_for_a_partition_until_it_is_read_to_its_end_at_assignment() -> None:
    ledger = Ledger()
    ledger.assigned({TP: 3})  # a takeover: three records already in the log
    ledger.apply(TP, 0, PENDING, pending("a"))
    ledger.apply(TP, 1, *reply("a"))
    assert ledger.due(now_ms=1e15).finish == [], "its final document may be the next record"
    assert ledger.offsets() == {}, "no commit while catching up"
    ledger.apply(TP, 2, FINAL, final("a"))  # it was: finished by the keeper before us
    ledger.read_to(TP, 3)
    assert ledger.due(now_ms=1e15).finish == [], "not finished twice"


def test_what_a_log_left_open_is_acted_on_once_caught_up() -> None:
    ledger = Ledger()
    ledger.assigned({TP: 2})
    ledger.apply(TP, 0, PENDING, pending("a"))
    ledger.apply(TP, 1, *reply("a"))
    ledger.read_to(TP, 2)
    assert len(ledger.due(now_ms=0).finish) == 1


def test_a_claim_that_lost_its_key_is_never_finished_and_a_second_reply_is_ignored() -> None:
    ledger = caught_up(Ledger())
    ledger.apply(TP, 0, PENDING, pending("first", idem="k"))
    ledger.apply(TP, 1, PENDING, pending("second", idem="k", t_in=1_500.0))
    assert set(ledger.open[TP]) == {"first"}
    ledger.apply(TP, 2, *reply("first"))
    ledger.apply(TP, 3, *reply("first"))  # a lookup served twice
    assert len(ledger.due(now_ms=0).finish) == 1


def test_a_failed_transaction_gives_its_exchanges_back_at_once() -> None:
    ledger = caught_up(Ledger())
    ledger.apply(TP, 0, PENDING, pending("replied"))
    ledger.apply(TP, 1, *reply("replied"))
    ledger.apply(TP, 2, PENDING, pending("expired", deadline_ms=0))
    work = ledger.due(now_ms=GRACE_MS)
    assert len(work.finish) == 2
    assert ledger.due(now_ms=GRACE_MS).finish == []
    ledger.retry(work.finish)
    assert {o.pending.exchange_id for _, o in ledger.due(now_ms=GRACE_MS).finish if o.pending} == {
        "replied", "expired",
    }  # fmt: skip


def test_a_callback_due_is_delivered_at_its_time_and_a_delivered_one_closes_the_exchange() -> None:
    ledger = caught_up(Ledger())
    ledger.apply(TP, 0, PENDING, pending("a"))
    ledger.apply(TP, 1, FINAL, final("a", {"state": "pending", "attempts": 1, "next_at": 7_000}))
    assert ledger.counts() == (0, 1)
    assert ledger.due(now_ms=6_999).deliver == []
    assert len(ledger.due(now_ms=7_000).deliver) == 1
    assert ledger.due(now_ms=8_000).deliver == [], "one delivery at a time"
    ledger.apply(TP, 2, FINAL, final("a", {"state": "delivered", "attempts": 2}))
    assert ledger.counts() == (0, 0)
    assert ledger.offsets() == {TP: 3}


def test_revoked_partitions_are_forgotten() -> None:
    ledger = caught_up(Ledger())
    ledger.apply(TP, 0, PENDING, pending("a"))
    ledger.apply(TP, 1, *reply("a"))
    ledger.revoked([TP])
    assert ledger.due(now_ms=1e15).finish == []
    assert ledger.offsets() == {}


def test_malformed_records_are_skipped_and_read_past() -> None:
    ledger = caught_up(Ledger())
    ledger.apply(TP, 0, PENDING, b"not json")
    ledger.apply(TP, 1, [("ndxp-exchange-id", None)], b"")
    assert ledger.open[TP] == {}
    assert ledger.offsets() == {TP: 2}


def test_a_callback_is_retried_with_growing_jittered_backoff_then_dead_lettered() -> None:
    assert after_attempt(1, None, max_attempts=3, first_backoff_s=2, now_ms=0) == {
        "state": CallbackState.DELIVERED, "attempts": 1,
    }  # fmt: skip
    retry = after_attempt(1, "HTTP 500", max_attempts=3, first_backoff_s=2, now_ms=1_000, jitter=0.0)
    assert retry == {"state": CallbackState.PENDING, "attempts": 1, "error": "HTTP 500", "next_at": 2_000.0}
    later = after_attempt(2, "HTTP 500", max_attempts=3, first_backoff_s=2, now_ms=1_000, jitter=1.0)
    assert later["next_at"] == 1_000 + 4_000, "doubled, the whole delay at the top of the jitter"
    assert (
        after_attempt(3, "HTTP 500", max_attempts=3, first_backoff_s=2, now_ms=0)["state"]
        is CallbackState.FAILED
    )
    assert backoff_s(50, 2, 1.0) == MAX_BACKOFF_S
    assert 1.0 <= backoff_s(1, 2, 0.5) <= 2.0


def test_a_callback_is_signed_over_its_timestamp_and_body() -> None:
    body = orjson.dumps({"exchange_id": "a"})
    sent = headers("a", b"secret", "1700000000", body, attempt=2)
    assert sent["X-NDXP-Signature"] == sign(b"secret", "1700000000", body)
    assert sent["X-NDXP-Signature"] != sign(b"secret", "1700000001", body), "the timestamp is signed"
    assert sent["X-NDXP-Delivery-Attempt"] == "2"
    rotating = headers("a", (b"new-secret", b"old-secret"), "1700000000", body, attempt=1)
    assert rotating["X-NDXP-Signature"].split(", ") == [
        sign(b"new-secret", "1700000000", body),
        sign(b"old-secret", "1700000000", body),
    ]  # the receiver accepts either while it moves to the new secret


async def test_a_failed_transaction_rewinds_the_batch_and_backs_off_a_fenced_one_stops() -> None:
    kafka = FakeKafka()
    kafka.create_topic("in")
    plain = kafka.producer()
    for i in range(3):
        await (await plain.send("in", f"r{i}".encode()))
    consumer = kafka.consumer("in", group_id="g")
    await consumer.start()
    batch = await consumer.getmany()
    producer = kafka.producer("g.tx")
    await producer.start()
    tx = Transactions(producer, "g", "test")
    tx.FIRST_PAUSE_S = 0.0  # the policy's pause is checked below, not waited for
    producer.fail_next_commit = RuntimeError("refused")
    assert not await tx.commit_batch(consumer, batch, [Outgoing("out", b"x")])
    assert await consumer.position(TopicPartition("in", 0)) == 0, "rewound: the batch is processed again"
    assert kafka.partitions("out")[0].records == [], "nothing of the failed transaction is visible"
    assert tx.failures == 1
    assert await tx.commit_batch(consumer, await consumer.getmany(), [Outgoing("out", b"x")])
    assert tx.failures == 0
    assert kafka.groups["g"] == {TopicPartition("in", 0): 3}
    await kafka.producer("g.tx").start()  # another instance with our transactional id
    with pytest.raises(TransactionFenced):
        await tx.commit([Outgoing("out", b"zombie")], {})


def test_the_transaction_pause_doubles_up_to_its_cap() -> None:
    tx = Transactions(FakeKafka().producer(), "g", "test")
    pauses = []
    for failures in range(6):
        tx.failures = failures
        pauses.append(tx.pause_s())
    assert pauses == [0.0, 0.2, 0.4, 0.8, 1.6, 2.0]


def test_final_documents_survive_a_round_trip_with_their_enums() -> None:
    from broker.model.documents import decode

    doc = decode(final("a", {"state": "pending", "attempts": 1, "next_at": 1}))
    assert isinstance(doc, Final)
    assert doc.status is Status.DONE
    assert doc.mode is Mode.ASYNC
    assert dataclasses.replace(doc, callback=None).callback_due is False


def test_a_member_providers_reply_is_taken_only_with_its_signature() -> None:
    """Every provider's adapter may write to the stored-exchanges topic: for a provider that runs its
    own adapter (it has a reply secret), an unsigned or wrongly signed reply is dropped and told."""
    secret = b"prov's-reply-secret-0123456789-abcdef"
    forged: list[str] = []
    ledger = caught_up(Ledger(secret_of=lambda p: secret if p == "prov" else None, on_forged=forged.append))
    ledger.apply(TP, 0, PENDING, pending("a"))
    headers, body = reply("a")
    ledger.apply(TP, 1, headers, body)  # no signature
    wrong = reply_mac(b"another-providers-secret-0123456789", "a", 200, "ok", body)
    ledger.apply(TP, 2, [*headers, (H_ORIGIN, wrong.encode())], body)
    assert ledger.due(now_ms=0).finish == []
    assert forged == ["prov", "prov"]
    signed = reply_mac(secret, "a", 200, "ok", body)
    ledger.apply(TP, 3, [*headers, (H_ORIGIN, signed.encode())], body)
    work = ledger.due(now_ms=0)
    assert [o.pending.exchange_id for _, o in work.finish if o.pending] == ["a"]
