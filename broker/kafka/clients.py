"""Client factories: producers, consumers and admin clients with the platform's defaults.

Producers use ``acks=all`` with idempotence and a small linger; consumers
never auto-commit unless asked. Security (TLS, SASL) comes from one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any, Unpack, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner

from broker.errors import KafkaUnavailable
from broker.kafka.boundary import Batch, Consumer, ConsumerParams, Producer, ProducerParams, Record
from broker.settings import Settings

log = logging.getLogger(__name__)
_DEFAULT_PARTITIONER = DefaultPartitioner()


def bootstrap(settings: Settings) -> str:
    """The bootstrap address to use, or a clear error if none is configured."""
    if not settings.kafka_bootstrap:
        raise KafkaUnavailable(
            "no Kafka configured: set NDXP_KAFKA_BOOTSTRAP=host:port, or start one with `ndxp kafka start`"
        )
    return settings.kafka_bootstrap


class StickyPartitioner:
    """Sends keyless records to one partition index at a time, moving on every ``interval_s``.

    Records whose order does not matter (requests, transaction records) then
    fill a few big batches instead of one small batch per partition: fewer,
    bigger produce requests and fetch responses (what Kafka's own producer
    does since KIP-480). aiokafka does not tell a partitioner the topic, so
    the index is shared by all topics; over time every partition gets its
    share. Keyed records keep their partition by key hash.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self._index = 0
        self._until = 0.0

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is not None:
            return int(_DEFAULT_PARTITIONER(key, all_partitions, available))
        now = time.monotonic()
        if now >= self._until:
            self._index = random.randrange(1 << 30)  # noqa: S311 - load spreading, not security
            self._until = now + self.interval_s
        choices = available or all_partitions
        return choices[self._index % len(choices)]


def security(settings: Settings) -> dict[str, Any]:
    """What every Kafka client of the platform passes to aiokafka: TLS and SASL, from one place."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    kw: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        kw["ssl_context"] = create_ssl_context(cafile=cafile)
    if protocol.startswith("SASL"):
        kw.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password,
        )
    return kw


def metadata_client(settings: Settings, client_id: str) -> AIOKafkaClient:
    """A bare client (its own connections) for asking the cluster's metadata; ``bootstrap()`` starts it."""
    return AIOKafkaClient(bootstrap_servers=bootstrap(settings), client_id=client_id, **security(settings))


def admin_client(settings: Settings, **params: Any) -> AIOKafkaAdminClient:
    """An admin client on the configured cluster, with the platform's security settings; not started."""
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap(settings), **security(settings), **params)


def make_producer(settings: Settings, **params: Unpack[ProducerParams]) -> Producer:
    """A producer with our defaults (acks=all, idempotent, small linger); not started."""
    kw: dict[str, Any] = {
        "bootstrap_servers": bootstrap(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.kafka_linger_ms,
        "max_batch_size": 256 * 1024,
        "max_request_size": max(settings.max_body_bytes * 2, 1024 * 1024),
        **security(settings),
    }
    kw.update(params)
    producer: Producer = AIOKafkaProducer(**kw)
    return producer


def static_member(settings: Settings) -> str | None:
    """This process's ``group.instance.id`` in a consumer group (KIP-345), or None for a dynamic member.

    A static member that restarts within the session timeout gets its partitions back with no
    rebalance; group names are per part (per provider for adapters), so the instance id is unique
    in each group, as its transactional ids are."""
    return settings.instance_id if settings.static_membership else None


def make_consumer(settings: Settings, *topics: str, **params: Unpack[ConsumerParams]) -> Consumer:
    """A consumer with our defaults (manual commits, earliest reset); not started."""
    kw: dict[str, Any] = {
        "bootstrap_servers": bootstrap(settings),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": 50,
        "max_partition_fetch_bytes": max(settings.max_body_bytes * 2, 1024 * 1024),
        **security(settings),
    }
    kw.update(params)
    consumer: Consumer = AIOKafkaConsumer(*topics, **kw)
    return consumer


async def topic_partitions(consumer: Consumer, topic: str, within_s: float = 10.0) -> list[TopicPartition]:
    """Every partition of ``topic``, refreshing the consumer's metadata until a broker knows the topic
    (within ``within_s``: a topic just created reaches each broker of a cluster a little later)."""
    deadline = time.monotonic() + within_s
    parts = consumer.partitions_for_topic(topic)
    while not parts and time.monotonic() < deadline:
        # aiokafka's public API has no metadata refresh: its client's is the one private call we make.
        await cast(Any, consumer)._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await asyncio.sleep(0.2)
    if not parts:
        raise KafkaUnavailable(f"topic {topic} has no partitions (does it exist?)")
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def consumer_lag(consumer: Consumer) -> int:
    """Records not yet consumed over the consumer's assignment (high watermark - position)."""
    lag = 0
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is None:  # nothing fetched from this partition yet
            continue
        with contextlib.suppress(Exception):  # partition revoked meanwhile
            lag += max(0, high - await consumer.position(tp))
    return lag


async def poll(consumer: Consumer, what: str, timeout_ms: int, max_records: int | None = None) -> Batch:
    """One ``getmany``; a failure is logged and yields an empty batch after a pause."""
    try:
        batch: Batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s: poll failed; retrying", what)
        await asyncio.sleep(0.5)
        return {}
    return batch


async def batches_to_end(
    consumer: Consumer, tp: TopicPartition, offset: int | None = None, max_records: int | None = None
) -> AsyncIterator[list[Record]]:
    """The messages of ``tp`` in batches, from ``offset`` (the beginning) to its end when called."""
    consumer.assign([tp])
    if offset is None:
        await consumer.seek_to_beginning(tp)
    else:
        consumer.seek(tp, offset)
    end = (await consumer.end_offsets([tp]))[tp]
    while await consumer.position(tp) < end:
        batch = (await consumer.getmany(tp, timeout_ms=500, max_records=max_records)).get(tp, [])
        if batch:
            yield batch


async def read_to_end(consumer: Consumer, tp: TopicPartition) -> list[Record]:
    """Every message of ``tp``, from the beginning to its end when called."""
    return [msg async for batch in batches_to_end(consumer, tp) for msg in batch]


async def read_compacted(consumer: Consumer, tp: TopicPartition) -> dict[bytes, bytes]:
    """Every key's latest value in ``tp`` (a tombstone removes the key)."""
    latest: dict[bytes, bytes] = {}
    for msg in await read_to_end(consumer, tp):
        if msg.key is None:  # not a row: a compacted topic keeps only keyed records
            continue
        if msg.value is None:
            latest.pop(msg.key, None)
        else:
            latest[msg.key] = msg.value
    return latest
