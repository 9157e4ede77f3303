"""One consumer for every provider an adapter process serves (decision 0013).

With a consumer per provider, a process that serves 100 providers ran 100 consumer groups: each fetched,
heartbeated and committed for a few records a second, and Kafka spent 1.4–2.7 ms of CPU per exchange
(against 0.15 at 10 providers). The intake is one consumer, in the group ``<prefix>.adapters``, that
reads the request topics of all of them and hands each partition's records to its provider's
:class:`~adapters.runtime.adapter.Adapter`. Each adapter still runs its own turns, write lane and
transactions (its transactional ids stay the provider's), and still reads only its own provider's
requests: the intake only polls, commits and follows the group for them.

- **Backpressure per provider.** A provider that holds ``adapter_backlog`` records has its partitions
  paused; the others are still fetched.
- **Commits together.** Every lookup offset due is committed in one request, once
  ``LOOKUP_COMMIT_AFTER`` lookups are done over all providers, or every ``LOOKUP_COMMIT_EVERY_S``.
- **Rebalances** go to the adapters whose partitions move.
- **Members apart.** A member agency's own adapter (``ndxp adapter --contracts``, its own Kafka user)
  keeps a consumer of its own in ``<prefix>.adapter.<provider>``, the only group its ACLs allow; a
  provider moved to its own adapter is dropped from the intake's subscription.

The group's static member id is the instance id and a digest of what the process was asked to serve
(``name``): two adapter processes with different agencies on one host are two members, and one that
restarts takes its partitions back with no rebalance.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Collection, Iterable

from aiokafka import ConsumerRebalanceListener, TopicPartition

from adapters.runtime.adapter import LOOKUP_COMMIT_AFTER, LOOKUP_COMMIT_EVERY_S, TURNS_EVERY_S, Adapter
from broker.kafka import Batch, KafkaService, make_consumer, static_member
from broker.settings import Settings

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        for adapter, tps in self.intake.by_adapter(revoked).items():
            await adapter.release(tps)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        for adapter in self.intake.adapters:
            adapter.assigned.set()


class Intake(KafkaService):
    """Polls for ``adapters`` (started and stopped with it) in one consumer group."""

    def __init__(self, settings: Settings, adapters: Iterable[Adapter], *, name: str = "") -> None:
        """``name``: what the process serves, stable across its restarts (its static member id)."""
        super().__init__("adapters' intake")
        self.settings = settings
        self.adapters: list[Adapter] = []
        self._by_topic: dict[str, Adapter] = {}
        self._room = asyncio.Event()
        self._subscribed: list[str] = []
        self._pending = list(adapters)
        member = static_member(settings)
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        self._member = f"{member}.{digest}" if member is not None else None

    def by_adapter(self, tps: Iterable[TopicPartition]) -> dict[Adapter, list[TopicPartition]]:
        out: dict[Adapter, list[TopicPartition]] = {}
        for tp in tps:
            adapter = self._by_topic.get(tp.topic)
            if adapter is not None:
                out.setdefault(adapter, []).append(tp)
        return out

    async def add(self, adapter: Adapter, *, subscribe: bool = True) -> None:
        """Serve one more provider (started here; stopped with the intake)."""
        if self.consumer is None:  # not started yet: with the others, when it starts
            self._pending.append(adapter)
            return
        adapter.attach(self.consumer, self.settings.names.adapters_group(), self._room, self._resubscribe)
        await adapter.start()
        self.adapters.append(adapter)
        self._by_topic.update(dict.fromkeys(adapter.requests, adapter))
        if subscribe:
            self._resubscribe()

    def _resubscribe(self) -> None:
        topics = sorted({t for a in self.adapters for t in a.topics})
        if topics == self._subscribed or self.consumer is None:
            return
        self._subscribed = topics
        if topics:
            self.consumer.subscribe(topics, listener=_Rebalance(self))
        else:
            self.consumer.unsubscribe()

    async def _open(self) -> None:
        settings = self.settings
        self.consumer = make_consumer(
            settings,
            group_id=settings.names.adapters_group(),
            client_id="ndxp-adapters",
            group_instance_id=self._member,
            isolation_level="read_committed",  # writes' offsets are committed in their transactions
            max_poll_records=settings.adapter_concurrency,
            fetch_max_wait_ms=500,  # a long poll returns as soon as a request arrives
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,  # static members: a third of the session is enough
        )
        await self.consumer.start()
        pending, self._pending = self._pending, []
        for adapter in pending:
            await self.add(adapter, subscribe=False)
        # Subscribed once, to all of them: a static member that rejoins is given the assignment it had,
        # which must be of topics it subscribes to (aiokafka refuses any other), so not a part of them.
        self._resubscribe()
        self.spawn(self._committer(), "committer")

    async def _close(self) -> None:
        """The adapters finish what they hold and commit it; then the consumer leaves the group."""
        results = await asyncio.gather(*(a.stop() for a in self.adapters), return_exceptions=True)
        for adapter, result in zip(self.adapters, results, strict=True):
            if isinstance(result, Exception):
                log.warning("%s did not stop cleanly: %r", adapter.what, result)
        await super()._close()

    async def _capacity(self) -> int:
        """Pause the partitions of providers that hold a full backlog; poll for as many records as
        the fullest of the others has room for."""
        assert self.consumer is not None
        backlog = self.settings.adapter_backlog
        while not self.stopping:
            self._room.clear()
            assignment = self.consumer.assignment()
            paused = self.consumer.paused()
            room: list[int] = []
            for adapter, tps in self.by_adapter(assignment).items():
                free = backlog - adapter.held
                if free <= 0:
                    if not paused.issuperset(tps):
                        self.consumer.pause(*tps)
                    continue
                room.append(free)
                if not paused.isdisjoint(tps):
                    self.consumer.resume(*(tp for tp in tps if tp in paused))
            if room or not assignment:
                return max(1, min([self.settings.adapter_concurrency, *room]))
            try:
                async with asyncio.timeout(0.2):
                    await self._room.wait()
            except TimeoutError:
                pass
        return 1

    async def _on_batch(self, batch: Batch) -> None:
        for tp, messages in batch.items():
            adapter = self._by_topic.get(tp.topic)
            if adapter is not None:
                await adapter.on_batch({tp: messages})

    async def _committer(self) -> None:
        """Every adapter's lookup offsets that are due, in one commit."""
        consumer = self.consumer
        assert consumer is not None
        lag_at = commit_at = 0.0
        while True:
            await asyncio.sleep(TURNS_EVERY_S)
            done = sum(a.done_since_commit for a in self.adapters)
            if done >= LOOKUP_COMMIT_AFTER or time.monotonic() >= commit_at:
                commit_at = time.monotonic() + LOOKUP_COMMIT_EVERY_S
                parts = [(a, a.committable()) for a in self.adapters]
                offsets = {tp: off for _, part in parts for tp, off in part.items()}
                if offsets:
                    try:
                        await consumer.commit(offsets)
                    except Exception as exc:  # e.g. a rebalance in progress: the next round retries
                        log.warning("%s: offset commit failed: %s", self.what, exc)
                        continue
                    for adapter, part in parts:
                        adapter.committed(part)
            if time.monotonic() >= lag_at:
                lag_at = time.monotonic() + 1.0
                for adapter in self.adapters:
                    await adapter.measure_lag()
