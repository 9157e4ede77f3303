"""The adapter runtime against real Kafka: dead letters, redelivery, deadlines."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from adapters.runtime.adapter import Adapter
from broker.kafka import TopicSpec, ensure_topics, make_consumer, make_producer
from broker.model.envelope import (
    H_ERROR,
    Reply,
    ReplyOutcome,
    RequestMeta,
    now_ms,
)
from broker.settings import Settings
from tests.fixtures import delivered, sample
from tests.integration.exchange_fixtures import EchoHandlers, running_adapter

pytestmark = pytest.mark.kafka


async def _read(
    settings: Settings, topic: str, count: int, within_s: float = 20
) -> list[tuple[list[tuple[str, bytes | None]], bytes]]:
    consumer = make_consumer(settings, isolation_level="read_committed")
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.seek_to_beginning(TopicPartition(topic, 0))
    got: list[tuple[list[tuple[str, bytes | None]], bytes]] = []
    try:
        async with asyncio.timeout(within_s):
            while len(got) < count:
                batch = await consumer.getmany(timeout_ms=200)
                got.extend((list(m.headers), m.value or b"") for msgs in batch.values() for m in msgs)
    finally:
        await consumer.stop()
    return got


async def _expired(adapter: Adapter, service: str, count: int, within_s: float) -> None:
    """Until the adapter has counted ``count`` requests of ``service`` as expired."""
    labels = {"provider": adapter.provider, "service": service}
    async with asyncio.timeout(within_s):
        while sample(adapter.metrics.registry, "ndxp_adapter_expired_total", **labels) < count:
            await asyncio.sleep(0.05)


def _meta(provider: str, eid: str, reply_to: str, deadline_ms: int, service: str = "echo") -> RequestMeta:
    return RequestMeta(
        exchange_id=eid, client="alice", provider=provider, service=service,
        reply_to=reply_to, deadline_ms=deadline_ms,
    )  # fmt: skip


async def test_a_slow_backlogged_service_does_not_hold_up_the_providers_others(
    exchange_settings: Settings, provider: str
) -> None:
    """One request topic carries every lookup of a provider: a service with a 2 s handler and a
    backlog of 108 requests (4 of it at a time) leaves the other service's 20 requests to be answered
    at once, not behind it; those of its requests whose deadline passes while they wait their turn
    are dropped, counted as expired, never handled."""
    settings = exchange_settings.replace(adapter_concurrency=16, adapter_service_concurrency=4)
    replies = settings.names.reply(f"{settings.instance_id}-lanes")
    topic = settings.names.requests(provider)
    await ensure_topics(settings, [TopicSpec(name=replies), TopicSpec(name=topic, partitions=4)])
    producer = make_producer(settings)
    await producer.start()
    try:
        far, soon = now_ms() + 120_000, now_ms() + 1_500
        sends = [(f"slow-{i}", far, "slow") for i in range(8)]
        sends += [(f"soon-{i}", soon, "slow") for i in range(10)]  # behind 8 of 2 s each, 4 at a time
        sends += [(f"slow-{i}", far, "slow") for i in range(8, 108)]
        sends += [(f"fast-{i}", far, "echo") for i in range(20)]
        for msg, deadline, service in sends:
            meta = _meta(provider, msg, replies, deadline, service)
            body = f'{{"msg": "{msg}", "sleep_ms": 2000}}' if service == "slow" else f'{{"msg": "{msg}"}}'
            # One partition: fetched in this order (the 4 slots go to the first 4 slow ones).
            await producer.send(topic, body.encode(), headers=meta.headers(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    handlers = EchoHandlers()
    async with running_adapter(settings, provider, handlers) as adapter:
        consumer = make_consumer(settings)
        await consumer.start()
        consumer.assign([TopicPartition(replies, 0)])
        await consumer.seek_to_beginning(TopicPartition(replies, 0))
        answered: list[str] = []
        try:
            async with asyncio.timeout(60):
                while sum(e.startswith("fast-") for e in answered) < 20:
                    batch = await consumer.getmany(timeout_ms=200)
                    answered += [Reply.from_message(m.headers, m.value or b"").exchange_id
                                 for msgs in batch.values() for m in msgs]  # fmt: skip
        finally:
            await consumer.stop()
        await _expired(adapter, "slow", 10, within_s=20)
    slow = [e for e in answered if e.startswith("slow-")]
    # 4 slow ones at a time, 2 s each: the fast ones came while the slow backlog had barely started.
    assert len(slow) <= 16, f"the fast service waited behind {len(slow)} slow requests"
    assert not any(m.startswith("soon-") for m in handlers.calls)
    assert not any(e.startswith("soon-") for e in answered)


async def test_redelivered_exchange_is_answered_from_memory_and_expired_ones_are_skipped(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings
    replies = settings.names.reply(f"{settings.instance_id}-rt")
    await ensure_topics(settings, [TopicSpec(name=replies)])
    handlers = EchoHandlers()
    async with running_adapter(settings, provider, handlers) as adapter:
        producer = make_producer(settings)
        await producer.start()
        try:
            topic = settings.names.requests(provider)
            fresh = _meta(provider, "dup-1", replies, now_ms() + 60_000)
            await delivered(producer, topic, b'{"msg": "once"}', headers=fresh.headers())
            await _read(settings, replies, 1)
            # The same exchange again (as after a lost commit): answered, not processed.
            await delivered(producer, topic, b'{"msg": "once"}', headers=fresh.headers())
            expired = _meta(provider, "old-1", replies, now_ms() - 1)
            await delivered(producer, topic, b'{"msg": "late"}', headers=expired.headers())
            got = await _read(settings, replies, 2)
        finally:
            await producer.stop()
        await _expired(adapter, "echo", 1, within_s=10)
    answers = [Reply.from_message(h, v) for h, v in got]
    assert [a.exchange_id for a in answers] == ["dup-1", "dup-1"]
    assert answers[0].body == answers[1].body
    assert handlers.calls == {"once": 1}
    assert sample(adapter.metrics.registry, "ndxp_adapter_redelivered_total", provider=provider) == 1


async def test_undecodable_messages_go_to_the_dead_letter_topic(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings
    replies = settings.names.reply(f"{settings.instance_id}-dlq")
    await ensure_topics(settings, [TopicSpec(name=replies)])
    handlers = EchoHandlers()
    async with running_adapter(settings, provider, handlers):
        producer = make_producer(settings)
        await producer.start()
        try:
            topic = settings.names.requests(provider)
            await delivered(producer, topic, b"no headers at all")
            meta = _meta(provider, "bad-json", replies, now_ms() + 60_000)
            await delivered(producer, topic, b"{nope", headers=meta.headers())
        finally:
            await producer.stop()
        dead = await _read(settings, settings.names.dlq(provider), 2)
        (reply,) = await _read(settings, replies, 1)
    assert sorted(v for _, v in dead) == [b"no headers at all", b"{nope"]
    assert all(any(k == H_ERROR for k, _ in h) for h, _ in dead)
    answer = Reply.from_message(*reply)
    assert answer.exchange_id == "bad-json"
    assert answer.outcome is ReplyOutcome.PROVIDER_ERROR
    assert not handlers.calls


async def test_a_stopping_adapter_finishes_and_commits_what_it_holds(
    exchange_settings: Settings, provider: str
) -> None:
    """Mutation once missed: an adapter that cancels the requests in hand on SIGTERM instead of
    answering and committing them. Then a second adapter would serve them again (or nobody would)."""
    settings = exchange_settings
    replies = settings.names.reply(f"{settings.instance_id}-stop")
    await ensure_topics(
        settings,
        [TopicSpec(name=replies), TopicSpec(name=settings.names.requests(provider), partitions=4)],
    )
    producer = make_producer(settings)
    await producer.start()
    try:
        for i in range(20):
            meta = _meta(provider, f"s-{i}", replies, now_ms() + 120_000)
            body = f'{{"msg": "s-{i}", "sleep_ms": 400}}'.encode()
            await producer.send(settings.names.requests(provider), body, headers=meta.headers())
        await producer.flush()
    finally:
        await producer.stop()
    first, second = EchoHandlers(), EchoHandlers()
    async with running_adapter(settings, provider, first):
        async with asyncio.timeout(30):
            while not first.calls:  # requests in hand, handlers sleeping
                await asyncio.sleep(0.02)
    # Stopped (as on SIGTERM) while holding requests: each one it started is answered and committed.
    held = set(first.calls)
    assert held, "the first adapter was stopped before it started any request"
    async with running_adapter(settings, provider, second):
        got = await _read(settings, replies, 20, within_s=60)
    answered = [Reply.from_message(h, v).exchange_id for h, v in got]
    assert sorted(answered) == sorted(f"s-{i}" for i in range(20)), "every request answered"
    assert len(answered) == len(set(answered)), "none answered twice"
    served_again = held & set(second.calls)
    assert not served_again, f"served again after a clean stop (not committed): {sorted(served_again)[:5]}"
    assert set(first.calls) | set(second.calls) == {f"s-{i}" for i in range(20)}
