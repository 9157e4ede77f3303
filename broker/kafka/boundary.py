"""The typed boundary: what the platform uses of aiokafka, as Protocols.

aiokafka ships no type information. What the platform uses of it is written
down here as small Protocols (:class:`Producer`, :class:`Consumer`,
:class:`Record`): the factories return them, every part is typed against
them, and the in-memory fakes of the tests are checked against them like
the real clients are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypedDict

from aiokafka import TopicPartition


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


class Cluster(Protocol):
    """What the platform reads of aiokafka's cluster metadata (partition leaders)."""

    def partitions_for_topic(self, topic: str) -> set[int] | None: ...
    def leader_for_partition(self, partition: TopicPartition) -> int | None: ...


class Metadata(Protocol):
    """The part of aiokafka's client that asks the cluster for its metadata."""

    @property
    def cluster(self) -> Cluster: ...
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
    def unsubscribe(self) -> None: ...
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
    async def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]: ...
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
    group_instance_id: str | None
    auto_offset_reset: str
    enable_auto_commit: bool
    max_poll_records: int
    fetch_max_wait_ms: int
    session_timeout_ms: int
    heartbeat_interval_ms: int
    isolation_level: str
    max_partition_fetch_bytes: int
    fetch_min_bytes: int
