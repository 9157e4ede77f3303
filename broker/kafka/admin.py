"""Topic administration: create (idempotently), wait for, delete and sweep topics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka.admin import NewTopic
from aiokafka.errors import (
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from broker.kafka.clients import admin_client, make_consumer, topic_partitions
from broker.settings import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicSpec:
    """A topic to create: name, partitions, replication factor and configs."""

    name: str
    partitions: int = 1
    replication_factor: int | None = None
    """``None``: ``Settings.kafka_replication_factor``, else 3 (fewer on a smaller cluster)."""
    configs: Mapping[str, str] = field(default_factory=dict)


async def ensure_topics(settings: Settings, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Idempotent: a topic that already exists is left as it is. Any other
    error raises :class:`KafkaError` naming the topic.
    """
    specs = list(specs)
    if not specs:
        return []
    admin = admin_client(settings)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        default_rf = settings.kafka_replication_factor or min(3, brokers)
        new = []
        for s in specs:
            rf = s.replication_factor or default_rf
            # Acknowledged writes (acks=all) survive one broker failing.
            configs = {"min.insync.replicas": str(min(2, rf)), **s.configs}
            new.append(NewTopic(s.name, s.partitions, rf, topic_configs=configs))
        response = await admin.create_topics(new, timeout_ms=30_000)
        # A member's adapter may not create topics (its ACLs): the platform made them, and what
        # it may see (DESCRIBE) and finds there is all it needs.
        unauthorized = [
            t for t, code, _ in response.topic_errors if code == TopicAuthorizationFailedError.errno
        ]
        if unauthorized:
            found = {d["topic"] for d in await admin.describe_topics(unauthorized) if d["error_code"] == 0}
            missing = sorted(set(unauthorized) - found)
            if missing:
                raise KafkaError(f"not allowed to create topics {missing}, and they do not exist")
    finally:
        await admin.close()
    created: list[str] = []
    for topic, code, message in response.topic_errors:
        if code == 0:
            created.append(topic)
        elif code not in (TopicAlreadyExistsError.errno, TopicAuthorizationFailedError.errno):
            raise KafkaError(f"cannot create topic {topic!r}: error {code}: {message}")
    if created:
        await wait_for_topics(settings, created)
    return created


async def delete_topics(settings: Settings, names: Iterable[str]) -> None:
    """Delete topics (a gateway worker's own reply topic when it stops: instances that are gone
    leave none behind). One that does not exist is no error."""
    admin = admin_client(settings)
    await admin.start()
    try:
        await admin.delete_topics(list(names), timeout_ms=10_000)
    except UnknownTopicOrPartitionError:
        pass
    finally:
        await admin.close()


async def sweep_idle_topics(settings: Settings, prefix: str, idle_hours: float) -> list[str]:
    """Delete the topics named ``prefix…`` with no message written in ``idle_hours`` (reply topics
    of gateway workers that are gone: a live worker writes a heartbeat to its own every 10 minutes)."""
    admin = admin_client(settings)
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
    finally:
        await admin.close()
    if not names:
        return []
    since = int((time.time() - idle_hours * 3600) * 1000)
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    idle: list[str] = []
    try:
        for name in names:
            tps = await topic_partitions(consumer, name)
            found = await consumer.offsets_for_times(dict.fromkeys(tps, since))
            if all(hit is None for hit in found.values()):  # nothing written since
                idle.append(name)
    finally:
        await consumer.stop()
    if idle:
        await delete_topics(settings, idle)
    return idle


async def wait_for_topics(settings: Settings, names: Iterable[str], within_s: float = 30.0) -> None:
    """Wait until every partition of ``names`` has a leader (topic is usable)."""
    wanted = set(names)
    admin = admin_client(settings)
    await admin.start()
    try:
        async with asyncio.timeout(within_s):
            while True:
                described = await admin.describe_topics(sorted(wanted))
                ready = {
                    t["topic"]
                    for t in described
                    if t["error_code"] == 0
                    and t["partitions"]
                    and all(p["leader"] >= 0 for p in t["partitions"])
                }
                if ready >= wanted:
                    return
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def cluster_brokers(settings: Settings) -> int:
    """How many brokers the cluster reports (raises if it cannot be reached)."""
    admin = admin_client(settings, request_timeout_ms=5000)
    await admin.start()
    try:
        info = await admin.describe_cluster()
        return len(info["brokers"])
    finally:
        await admin.close()
