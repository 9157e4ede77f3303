"""Consume–process–produce, exactly once: the one transaction helper of the counter, keeper and adapters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from aiokafka.errors import ProducerFenced

from broker.errors import TransactionFenced
from broker.kafka.boundary import Batch, Consumer, Producer, Written

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to produce inside a transaction."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int | None = None


async def send_all(producer: Producer, outgoing: Iterable[Outgoing]) -> list[asyncio.Future[Written]]:
    """Hand every record to the producer (inside a transaction: part of it); their acknowledgements."""
    return [
        await producer.send(
            out.topic, out.value, key=out.key, headers=out.headers or None, partition=out.partition
        )
        for out in outgoing
    ]


class Transactions:
    """One transactional producer's transactions, with the platform's one failure policy.

    :meth:`commit` produces records and commits consumer offsets atomically.
    The policy, the same for the counter, the keeper and every adapter:

    - another instance took over the transactional id (``ProducerFenced``):
      :class:`TransactionFenced` is raised; the part must stop (its
      supervisor restarts it, and the newer instance carries on);
    - any other failure is logged, the call pauses (0.2 s, doubling up to
      2 s while failures repeat) and returns False: nothing of the
      transaction is visible to ``read_committed`` readers, and the caller
      tries the same work again (or rewinds, as :meth:`commit_batch` does).
    """

    FIRST_PAUSE_S = 0.2
    MAX_PAUSE_S = 2.0

    def __init__(self, producer: Producer, group_id: str, what: str) -> None:
        self.producer = producer
        self.group_id = group_id
        self.what = what
        self.failures = 0
        """Failed transactions in a row (0 after a success)."""

    def pause_s(self) -> float:
        """How long to wait after the current run of failures."""
        if self.failures == 0:
            return 0.0
        return min(self.MAX_PAUSE_S, self.FIRST_PAUSE_S * 2.0 ** (self.failures - 1))

    async def commit(
        self,
        outgoing: Iterable[Outgoing],
        offsets: Mapping[TopicPartition, int],
        written: list[asyncio.Future[Written]] | None = None,
    ) -> bool:
        """In one transaction: ``outgoing`` and ``offsets`` (either may be empty). False: it failed.

        ``written``, when given, receives the records' acknowledgements (where each landed)."""
        try:
            async with self.producer.transaction():
                sent = await send_all(self.producer, outgoing)
                if written is not None:
                    written.extend(sent)
                if offsets:
                    await self.producer.send_offsets_to_transaction(offsets, self.group_id)
        except ProducerFenced as exc:
            raise TransactionFenced(f"{self.what}: another instance took over its transactional id") from exc
        except Exception as exc:
            self.failures += 1
            log.warning("%s: transaction failed (%r); its work is tried again", self.what, exc)
            await asyncio.sleep(self.pause_s())
            return False
        self.failures = 0
        return True

    async def commit_batch(self, consumer: Consumer, batch: Batch, outgoing: Iterable[Outgoing]) -> bool:
        """Consume–process–produce: ``outgoing`` and the offsets that follow ``batch``, in one transaction.

        When it fails, the consumer is rewound to the start of the batch, so that it is processed again.
        """
        offsets = {tp: messages[-1].offset + 1 for tp, messages in batch.items()}
        if await self.commit(outgoing, offsets):
            return True
        for tp, messages in batch.items():
            with contextlib.suppress(Exception):  # partition may have been revoked
                consumer.seek(tp, messages[0].offset)
        return False


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
