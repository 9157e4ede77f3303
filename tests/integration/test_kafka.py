"""Our Kafka helpers and the local Kafka, against a real Apache Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from broker.dev.localkafka import LocalKafka, _pid_alive
from broker.kafka import Batch, TopicSpec, ensure_topics, make_consumer, make_producer
from broker.settings import Settings
from tests.fixtures import delivered

pytestmark = pytest.mark.kafka


async def _consume(settings: Settings, topic: str, count: int, timeout: float = 30) -> list[bytes]:
    consumer = make_consumer(settings, topic)
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while len(values) < count:
                batch = await consumer.getmany(timeout_ms=200)
                values.extend(m.value or b"" for msgs in batch.values() for m in msgs)
    finally:
        await consumer.stop()
    return values


async def test_produce_consume_round_trip_keeps_value_and_headers(
    settings: Settings, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("roundtrip")
    await ensure_topics(settings, [TopicSpec(name=topic, partitions=3)])
    producer = make_producer(settings)
    await producer.start()
    try:
        await delivered(producer, topic, b'{"a": 1}', key=b"k", headers=[("ndxp-id", b"x1")])
    finally:
        await producer.stop()
    consumer = make_consumer(settings, topic)
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            batch: Batch = {}
            while not batch:
                batch = await consumer.getmany(timeout_ms=200)
        ((msg,),) = batch.values()
    finally:
        await consumer.stop()
    assert msg.value == b'{"a": 1}'
    assert msg.key == b"k"
    assert ("ndxp-id", b"x1") in list(msg.headers)


async def test_topic_creation_is_idempotent_and_applies_partitions_and_configs(
    settings: Settings, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("idem")
    spec = TopicSpec(name=topic, partitions=4, configs={"retention.ms": "3600000"})
    assert await ensure_topics(settings, [spec]) == [topic]
    assert await ensure_topics(settings, [spec]) == []
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        (configs,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": None})]
        )
    finally:
        await admin.close()
    assert len(described["partitions"]) == 4
    # DescribeConfigs: resources of (error, message, type, name, entries of (name, value, ...)).
    entries = {entry[0]: entry[1] for resource in configs.resources for entry in resource[4]}
    assert entries.get("retention.ms") == "3600000", entries


@pytest.mark.slow
async def test_three_node_cluster_keeps_acknowledged_messages_when_a_node_stops(
    base_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    kafka = LocalKafka(base_settings, nodes=3)
    bootstrap = await asyncio.to_thread(kafka.start)
    try:
        settings = base_settings.replace(kafka_bootstrap=bootstrap)
        # Topics the platform creates with its defaults are replicated 3 times too.
        default = unique_name("default-rf")
        await ensure_topics(settings, [TopicSpec(name=default, partitions=2)])
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([default])
        finally:
            await admin.close()
        assert {len(p["replicas"]) for p in described["partitions"]} == {3}
        topic = unique_name("replicated")
        await ensure_topics(
            settings,
            [
                TopicSpec(
                    name=topic,
                    partitions=2,
                    replication_factor=3,
                    configs={"min.insync.replicas": "2"},
                )
            ],
        )
        producer = make_producer(settings, request_timeout_ms=20_000)
        await producer.start()
        acked: list[bytes] = []
        try:
            for i in range(50):
                await delivered(producer, topic, f"before-{i}".encode())
                acked.append(f"before-{i}".encode())
            stopped_pid = kafka.pids[3]
            await asyncio.to_thread(kafka.stop_node, 3)
            assert not _pid_alive(stopped_pid)
            for i in range(50):
                await delivered(producer, topic, f"after-{i}".encode())
                acked.append(f"after-{i}".encode())
        finally:
            await producer.stop()
        seen = await _consume(settings, topic, len(acked))
        assert sorted(seen) == sorted(acked)
    finally:
        pids = list(kafka.pids.values())
        await asyncio.to_thread(kafka.stop)
    assert not any(_pid_alive(p) for p in pids)
    assert not kafka.data_dir.exists()


@pytest.mark.slow
async def test_data_survives_restart_with_data_dir(
    base_settings: Settings, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    data_dir = tmp_path / "kafka"
    topic = unique_name("durable")
    first = LocalKafka(base_settings, nodes=1, data_dir=data_dir)
    bootstrap = await asyncio.to_thread(first.start)
    try:
        settings = base_settings.replace(kafka_bootstrap=bootstrap)
        await ensure_topics(settings, [TopicSpec(name=topic)])
        producer = make_producer(settings)
        await producer.start()
        try:
            await delivered(producer, topic, b"kept")
        finally:
            await producer.stop()
    finally:
        await asyncio.to_thread(first.stop)
    assert data_dir.exists()

    second = LocalKafka(base_settings, nodes=1, data_dir=data_dir)
    bootstrap2 = await asyncio.to_thread(second.start)
    try:
        assert bootstrap2 == bootstrap  # same layout, same ports
        settings = base_settings.replace(kafka_bootstrap=bootstrap2)
        assert await _consume(settings, topic, 1) == [b"kept"]
    finally:
        await asyncio.to_thread(second.stop)
    assert data_dir.exists()


async def test_reply_topics_with_no_heartbeat_for_long_are_swept(settings: Settings) -> None:
    import time
    import uuid

    from broker.kafka import admin_client, sweep_idle_topics

    prefix = settings.names.reply(f"sweep-{uuid.uuid4().hex[:8]}-")
    gone, alive = f"{prefix}killed-w0", f"{prefix}live-w0"
    await ensure_topics(settings, [TopicSpec(name=gone), TopicSpec(name=alive)])
    producer = make_producer(settings)
    await producer.start()
    try:
        two_days_ago = int((time.time() - 48 * 3600) * 1000)
        await (await producer.send(gone, b"", timestamp_ms=two_days_ago))
        await (await producer.send(alive, b""))
    finally:
        await producer.stop()
    assert await sweep_idle_topics(settings, prefix, idle_hours=24) == [gone]
    admin = admin_client(settings)
    await admin.start()
    try:
        async with asyncio.timeout(20):
            while gone in (topics := await admin.list_topics()):
                await asyncio.sleep(0.2)
        assert alive in topics, "a topic written to recently stays"
    finally:
        await admin.close()
