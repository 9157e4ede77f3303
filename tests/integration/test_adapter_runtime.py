"""The adapter runtime against real Kafka: dead letters, redelivery, deadlines."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from broker.envelope import (
    H_ERROR,
    Reply,
    ReplyOutcome,
    RequestMeta,
    dlq_topic,
    now_ms,
    request_topic,
)
from broker.kafka import TopicSpec, ensure_topics, make_consumer, make_producer
from broker.settings import Settings
from tests.integration.exchange_fixtures import EchoHandlers, running_adapter

pytestmark = pytest.mark.kafka


async def _read(
    settings: Settings, topic: str, count: int, within_s: float = 20
) -> list[tuple[list[tuple[str, bytes]], bytes]]:
    consumer = make_consumer(settings, isolation_level="read_committed")
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.seek_to_beginning(TopicPartition(topic, 0))
    got: list[tuple[list[tuple[str, bytes]], bytes]] = []
    try:
        async with asyncio.timeout(within_s):
            while len(got) < count:
                batch = await consumer.getmany(timeout_ms=200)
                got.extend((list(m.headers), m.value) for msgs in batch.values() for m in msgs)
    finally:
        await consumer.stop()
    return got


def _meta(provider: str, eid: str, reply_to: str, deadline_ms: int) -> RequestMeta:
    return RequestMeta(
        exchange_id=eid, client="alice", provider=provider, service="echo",
        reply_to=reply_to, deadline_ms=deadline_ms,
    )  # fmt: skip


async def test_redelivered_exchange_is_answered_from_memory_and_expired_ones_are_skipped(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings
    replies = f"ndxp.reply.{settings.instance_id}-rt"
    await ensure_topics(settings, [TopicSpec(name=replies)])
    handlers = EchoHandlers()
    async with running_adapter(settings, provider, handlers) as adapter:
        producer = make_producer(settings)
        await producer.start()
        try:
            topic = request_topic(provider, "echo")
            fresh = _meta(provider, "dup-1", replies, now_ms() + 60_000)
            await producer.send_and_wait(topic, b'{"msg": "once"}', headers=fresh.headers())
            await _read(settings, replies, 1)
            # The same exchange again (as after a lost commit): answered, not processed.
            await producer.send_and_wait(topic, b'{"msg": "once"}', headers=fresh.headers())
            expired = _meta(provider, "old-1", replies, now_ms() - 1)
            await producer.send_and_wait(topic, b'{"msg": "late"}', headers=expired.headers())
            got = await _read(settings, replies, 2)
        finally:
            await producer.stop()
        async with asyncio.timeout(10):
            while adapter.metrics.expired.labels(provider, "echo")._value.get() < 1:
                await asyncio.sleep(0.05)
    answers = [Reply.from_message(h, v) for h, v in got]
    assert [a.exchange_id for a in answers] == ["dup-1", "dup-1"]
    assert answers[0].body == answers[1].body
    assert handlers.calls == {"once": 1}
    assert adapter.metrics.redelivered.labels(provider)._value.get() == 1


async def test_undecodable_messages_go_to_the_dead_letter_topic(
    exchange_settings: Settings, provider: str
) -> None:
    settings = exchange_settings
    replies = f"ndxp.reply.{settings.instance_id}-dlq"
    await ensure_topics(settings, [TopicSpec(name=replies)])
    handlers = EchoHandlers()
    async with running_adapter(settings, provider, handlers):
        producer = make_producer(settings)
        await producer.start()
        try:
            topic = request_topic(provider, "echo")
            await producer.send_and_wait(topic, b"no headers at all")
            meta = _meta(provider, "bad-json", replies, now_ms() + 60_000)
            await producer.send_and_wait(topic, b"{nope", headers=meta.headers())
        finally:
            await producer.stop()
        dead = await _read(settings, dlq_topic(provider), 2)
        (reply,) = await _read(settings, replies, 1)
    assert sorted(v for _, v in dead) == [b"no headers at all", b"{nope"]
    assert all(any(k == H_ERROR for k, _ in h) for h, _ in dead)
    answer = Reply.from_message(*reply)
    assert answer.exchange_id == "bad-json"
    assert answer.outcome is ReplyOutcome.PROVIDER_ERROR
    assert not handlers.calls
