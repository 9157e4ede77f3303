"""Kafka helpers used by every part: the typed boundary, producer/consumer factories, topic admin.

aiokafka ships no type information. What the platform uses of it is written
down here as small Protocols (:class:`Producer`, :class:`Consumer`,
:class:`Record`): the factories return them, every part is typed against
them, and a test's fake is checked against them like the real client is.

Our defaults: producers use ``acks=all`` with idempotence and a small linger;
consumers never auto-commit unless asked. Topic creation is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, Unpack, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner

from broker.errors import StartupError
from broker.settings import Settings

log = logging.getLogger(__name__)
_TOPIC_ALREADY_EXISTS = 36
_DEFAULT_PARTITIONER = DefaultPartitioner()


class KafkaUnavailable(StartupError, RuntimeError):
    """No Kafka bootstrap address is configured or the cluster cannot be reached."""


# -- The typed boundary: what the platform uses of aiokafka ------------------


class Written(Protocol):
    """Where Kafka stored a record (aiokafka's ``RecordMetadata``; a consumed record has it too)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


class Record(Written, Protocol):
    """A consumed record (aiokafka's ``ConsumerRecord``), as the platform reads it."""

    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]:
        """As sent: Kafka allows a header without a value, and hostile senders use it."""
        ...


Batch = dict[TopicPartition, list[Record]]
"""One poll's records, by partition, each partition's in offset order."""


class Metadata(Protocol):
    """The part of aiokafka's client that asks the cluster for its metadata."""

    async def fetch_all_metadata(self) -> object: ...


Headers = Sequence[tuple[str, bytes | None]]


class Sender(Protocol):
    """The one thing most of the platform does with a producer (the transaction recorder: only this)."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Written]:
        """Hand the record to the producer; the future resolves once Kafka has acknowledged it."""
        ...


class Producer(Sender, Protocol):
    """What the platform uses of :class:`aiokafka.AIOKafkaProducer`."""

    @property
    def client(self) -> Metadata: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def flush(self) -> None: ...
    async def partitions_for(self, topic: str) -> set[int]: ...
    def transaction(self) -> AbstractAsyncContextManager[object]: ...
    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None: ...


class Consumer(Protocol):
    """What the platform uses of :class:`aiokafka.AIOKafkaConsumer`."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def subscribe(self, topics: Sequence[str] = (), *, listener: Any = None) -> None: ...
    def assign(self, partitions: Sequence[TopicPartition]) -> None: ...
    def assignment(self) -> set[TopicPartition]: ...
    def partitions_for_topic(self, topic: str) -> set[int] | None: ...
    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Batch: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def seek_to_beginning(self, *partitions: TopicPartition) -> bool: ...
    async def seek_to_end(self, *partitions: TopicPartition) -> bool: ...
    async def position(self, partition: TopicPartition) -> int: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]: ...
    async def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, Any]: ...
    async def committed(self, partition: TopicPartition) -> int | None: ...
    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None: ...


class ProducerParams(TypedDict, total=False):
    """Keyword pass-through to :class:`aiokafka.AIOKafkaProducer`."""

    client_id: str
    linger_ms: int
    max_batch_size: int
    max_request_size: int
    request_timeout_ms: int
    compression_type: str | None
    transactional_id: str
    transaction_timeout_ms: int
    partitioner: Callable[[bytes | None, list[int], list[int]], int]


class ConsumerParams(TypedDict, total=False):
    """Keyword pass-through to :class:`aiokafka.AIOKafkaConsumer`."""

    client_id: str
    group_id: str | None
    auto_offset_reset: str
    enable_auto_commit: bool
    max_poll_records: int
    fetch_max_wait_ms: int
    session_timeout_ms: int
    heartbeat_interval_ms: int
    isolation_level: str
    max_partition_fetch_bytes: int
    fetch_min_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicSpec:
    """A topic to create: name, partitions, replication factor and configs."""

    name: str
    partitions: int = 1
    replication_factor: int | None = None
    """``None``: ``Settings.kafka_replication_factor``, else 3 (fewer on a smaller cluster)."""
    configs: Mapping[str, str] = field(default_factory=dict)


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


async def topic_partitions(consumer: Consumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic`` (refreshing the consumer's metadata for a topic it has not seen)."""
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        # aiokafka's public API has no metadata refresh: its client's is the one private call we make.
        await cast(Any, consumer)._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise KafkaUnavailable(f"topic {topic} has no partitions (does it exist?)")
    return [TopicPartition(topic, p) for p in sorted(parts)]


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
    finally:
        await admin.close()
    created: list[str] = []
    for topic, code, message in response.topic_errors:
        if code == 0:
            created.append(topic)
        elif code != _TOPIC_ALREADY_EXISTS:
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


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to produce inside a transaction."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int | None = None


async def send_all(producer: Producer, outgoing: Iterable[Outgoing]) -> None:
    """Hand every record to the producer (inside a transaction: part of it)."""
    for out in outgoing:
        await producer.send(
            out.topic, out.value, key=out.key, headers=out.headers or None, partition=out.partition
        )


async def produce_and_commit(
    producer: Producer,
    consumer: Consumer,
    group_id: str,
    batch: Batch,
    outgoing: Iterable[Outgoing],
    what: str,
) -> bool:
    """Consume–process–produce, exactly once: in one Kafka transaction, produce
    ``outgoing`` and commit the offsets that follow ``batch``.

    Returns False when the transaction failed; the consumer is then rewound to
    the start of the batch, so that it is processed again.
    """
    offsets = {tp: messages[-1].offset + 1 for tp, messages in batch.items()}
    try:
        async with producer.transaction():
            await send_all(producer, outgoing)
            await producer.send_offsets_to_transaction(offsets, group_id)
    except Exception:
        log.exception("%s: transaction failed; the batch will be processed again", what)
        for tp, messages in batch.items():
            with contextlib.suppress(Exception):  # partition may have been revoked
                consumer.seek(tp, messages[0].offset)
        await asyncio.sleep(0.2)
        return False
    return True


async def _await_cancelled(task: asyncio.Task[None]) -> None:
    """Await a task we may have cancelled; its CancelledError is swallowed, ours is not."""
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


class OffsetTracker:
    """At-least-once offset bookkeeping for records processed concurrently.

    A partition's committable offset is its oldest record still in progress
    (or the one after the last fetched when none is): a crash redelivers what
    was not finished, never skips it. Records of one partition are fetched in
    offset order, so each partition's pending offsets stay sorted.
    """

    __slots__ = ("_committed", "_next", "_pending")

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, dict[int, None]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def fetched(self, tp: TopicPartition, offset: int) -> None:
        self._pending.setdefault(tp, {})[offset] = None
        self._next[tp] = offset + 1

    def done(self, tp: TopicPartition, offset: int) -> None:
        pending = self._pending.get(tp)
        if pending is not None:
            pending.pop(offset, None)

    def in_progress(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def committable(self, only: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Offsets to commit now: those that moved since the last commit."""
        out: dict[TopicPartition, int] = {}
        for tp in self._next if only is None else only:
            if tp not in self._next:
                continue
            pending = self._pending.get(tp)
            offset = next(iter(pending)) if pending else self._next[tp]
            if self._committed.get(tp) != offset:
                out[tp] = offset
        return out

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions revoked: another member continues from their committed offsets."""
        for tp in tps:
            self._pending.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)


class KafkaService:
    """Base of every part that runs one Kafka poll loop (adapter, counter, reply router, stats view).

    ``start()`` and ``stop()`` are idempotent and the service is an async
    context manager. Subclasses open their clients in ``_open()`` (setting
    ``self.consumer``), handle each polled batch in ``_on_batch()``, and
    close in ``_close()``. A loop that dies of an unexpected error is
    logged, recorded in ``failed`` and reported by ``healthy``; it never
    dies silently.
    """

    poll_timeout_ms = 200
    cancel_on_stop = False
    """True for followers that hold nothing to finish: stop cancels the loop at once."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.consumer: Consumer | None = None
        self.failed: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._running = False

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def healthy(self) -> bool:
        """Started and its loop still running."""
        return self._task is not None and not self._task.done()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._stopping.clear()
        self.failed = None
        try:
            await self._open()
        except BaseException:
            await self._close()
            self._running = False
            raise
        self._task = asyncio.create_task(self._loop(), name=self.what)

    async def stop(self) -> None:
        if not self._running:
            return
        self._stopping.set()
        if self._task is not None:
            if self.cancel_on_stop:
                self._task.cancel()
            await _await_cancelled(self._task)
            self._task = None
        try:
            await self._close()
        finally:
            self._running = False

    async def _loop(self) -> None:
        assert self.consumer is not None
        try:
            while not self._stopping.is_set():
                limit = await self._capacity()
                if self._stopping.is_set():
                    break
                batch = await poll(self.consumer, self.what, self.poll_timeout_ms, max_records=limit)
                await self._on_batch(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed = exc
            log.critical("%s stopped on an unexpected error", self.what, exc_info=True)
            self._on_failure(exc)

    async def _capacity(self) -> int | None:
        """How many records the next poll may return (waits for room); None: no limit."""
        return None

    def _on_failure(self, exc: BaseException) -> None:
        """Called once when the loop dies (default: nothing more than the log and ``healthy``)."""

    async def _open(self) -> None:
        raise NotImplementedError

    async def _on_batch(self, batch: Batch) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None


class Reachability:
    """Whether Kafka answers, as seen through one producer's connections.

    Every ``interval_s`` it asks the cluster for its metadata; two failures in
    a row (no answer within ``timeout_s``) make ``ok`` False until an answer
    comes again. The gateway uses it to answer 503 at once instead of letting
    callers wait for a timeout, and for ``/readyz``.
    """

    def __init__(self, producer: Producer, *, interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self.producer = producer
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.ok = True
        self.last_error = ""
        self._failures = 0
        self._last_success = 0.0
        self._task: asyncio.Task[None] | None = None

    def saw_success(self) -> None:
        """Kafka just acknowledged a write: it is reachable, whatever one broker's metadata says."""
        self._last_success = time.monotonic()
        if not self.ok:
            log.warning("Kafka reachable again")
            self.ok = True
            self._failures = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kafka reachability")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await _await_cancelled(self._task)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.producer.client.fetch_all_metadata()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - self._last_success < 2 * self.interval_s + self.timeout_s:
                    # One slow or paused broker: writes to the others still succeed.
                    await asyncio.sleep(self.interval_s)
                    continue
                self._failures += 1
                self.last_error = str(exc) or type(exc).__name__
                if self._failures >= 2 and self.ok:
                    log.error("Kafka unreachable: %s; answering 503 until it is back", self.last_error)
                    self.ok = False
            else:
                if not self.ok:
                    log.warning("Kafka reachable again")
                self._failures = 0
                self.ok = True
            await asyncio.sleep(self.interval_s)
