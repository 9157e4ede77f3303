"""The live registry in Kafka: the follower every part runs, and the one writer.

:class:`RegistryFollower` reads the registry topic from the beginning
(``read_committed``) before its part serves, then applies each new record
as it comes (a poll every 100 ms: a change is applied everywhere well within
a second). Records are applied in the log's order, so every part reaches the
same state; one it cannot decode is skipped, logged and counted.

:class:`RegistryWriter` makes changes conditional and never loses one: it
holds the registry's transactional id (``<registry topic>.writer``), reads
the log to its end, decides on that state (``If-Match``, rights, checks), and
commits the new documents and the change log entry in one transaction. A
second writer (another instance's admin) that takes the id fences the first:
the first's commit fails, and it starts over on the state the second wrote.
So two admins changing one agency at once: one wins, the other gets 409.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import IllegalOperation, KafkaError, ProducerFenced

from broker.contracts.catalog import Catalog
from broker.contracts.live import Change, Entry, LiveRegistry
from broker.contracts.registry import documents_from_import, read_yaml
from broker.errors import RegistryError, Unavailable
from broker.kafka.admin import ensure_topics
from broker.kafka.boundary import Batch, Producer
from broker.kafka.clients import make_consumer, make_producer
from broker.kafka.service import KafkaService
from broker.kafka.topics import Topics
from broker.model.envelope import new_exchange_id
from broker.settings import Settings

log = logging.getLogger(__name__)


class RegistryMetrics(Protocol):
    """What the follower and writer report (``broker.metrics.RegistryMetrics`` is one)."""

    version: Any
    apply_lag: Any
    skipped: Any
    changes: Any


CATCH_UP_S = 60.0
"""Longest a starting part waits to read the whole registry."""


class RegistryFollower(KafkaService):
    """Follows the registry topic (and, for the admin, the change log) into a :class:`LiveRegistry`."""

    poll_timeout_ms = 100
    cancel_on_stop = True

    def __init__(
        self,
        settings: Settings,
        *,
        part: str,
        metrics: RegistryMetrics | None = None,
        changes: bool = False,
        live: LiveRegistry | None = None,
    ) -> None:
        super().__init__(f"registry follower ({part})")
        self.settings = settings
        self.live = live if live is not None else LiveRegistry()
        self.metrics = metrics
        self.listeners: list[Callable[[list[Entry]], None]] = []
        """Called with the entries of each batch of changes once it is applied (same loop, no await
        in between)."""
        self.changes: list[Change] | None = [] if changes else None
        """The change log, when followed (the admin's)."""
        topics = Topics(settings)
        self._registry_tp = TopicPartition(topics.registry().name, 0)
        self._changes_tp = TopicPartition(topics.registry_changes().name, 0)
        self._positions: dict[TopicPartition, int] = {}
        self._moved = asyncio.Event()
        self._started_at = 0.0

    @property
    def tps(self) -> list[TopicPartition]:
        return [self._registry_tp] + ([self._changes_tp] if self.changes is not None else [])

    async def _open(self) -> None:
        topics = Topics(self.settings)
        await ensure_topics(self.settings, [topics.registry(), topics.registry_changes()])
        self.consumer = make_consumer(
            self.settings, group_id=None, isolation_level="read_committed", fetch_max_wait_ms=100
        )
        await self.consumer.start()
        self.consumer.assign(self.tps)
        for tp in self.tps:
            await self.consumer.seek_to_beginning(tp)
        self._started_at = time.time()
        ends = await self.consumer.end_offsets(self.tps)
        async with asyncio.timeout(CATCH_UP_S):
            while [tp for tp in self.tps if await self.consumer.position(tp) < ends[tp]]:
                self._apply(await self.consumer.getmany(timeout_ms=500, max_records=20_000), initial=True)
        await self._note_positions()
        log.info("%s: %d registry records applied", self.what, self.live.applied)

    async def _on_batch(self, batch: Batch) -> None:
        self._apply(batch, initial=False)
        await self._note_positions()

    async def _note_positions(self) -> None:
        assert self.consumer is not None
        for tp in self.tps:
            self._positions[tp] = await self.consumer.position(tp)
        if self.metrics is not None:
            self.metrics.version.set(self._positions[self._registry_tp])  # the same in every caught-up part
        self._moved.set()
        self._moved = asyncio.Event()

    def _apply(self, batch: Batch, *, initial: bool) -> None:
        changed: list[Entry] = []
        now = time.time()
        for tp, records in batch.items():
            for msg in records:
                if tp == self._changes_tp:
                    self._apply_change(msg.value)
                    continue
                try:
                    entry = Entry.decode(msg.key, msg.value)
                    self.live.apply(entry)
                except RegistryError as exc:
                    log.error("%s: registry record at offset %d skipped: %s", self.what, msg.offset, exc)
                    if self.metrics is not None:
                        self.metrics.skipped.inc()
                    continue
                changed.append(entry)
                if self.metrics is not None and not initial and entry.at:
                    self.metrics.apply_lag.observe(max(0.0, now - entry.at))
        if changed and not initial:
            for listener in self.listeners:
                try:
                    listener(changed)
                except Exception:
                    log.exception("%s: a listener failed", self.what)

    def _apply_change(self, value: bytes | None) -> None:
        assert self.changes is not None
        try:
            self.changes.append(Change.decode(value))
        except RegistryError as exc:
            log.error("%s: %s", self.what, exc)

    async def caught_up(self, within_s: float = 10.0) -> None:
        """Wait until everything committed to the registry when called is applied here."""
        assert self.consumer is not None
        ends = await self.consumer.end_offsets(self.tps)
        await self.reached(ends, within_s)

    async def reached(self, offsets: dict[TopicPartition, int], within_s: float = 10.0) -> None:
        try:
            async with asyncio.timeout(within_s):
                while any(self._positions.get(tp, 0) < end for tp, end in offsets.items()):
                    if not self.healthy:
                        raise Unavailable("the registry follower stopped", retry_after=1)
                    await self._moved.wait()
        except TimeoutError:
            raise Unavailable("the live registry was not read to its end in time", retry_after=1) from None


@dataclass(slots=True, kw_only=True)
class Proposal:
    """What a change writes: new documents (revisions decided) and its change log entry."""

    entries: list[Entry] = field(default_factory=list)
    change: Change


def new_change(
    actor: str,
    action: str,
    target: str,
    *,
    outcome: str = "applied",
    detail: str = "",
    parties: tuple[str, ...] = (),
) -> Change:
    return Change(change_id=new_exchange_id(), at=time.time(), actor=actor, action=action, target=target,
                  outcome=outcome, detail=detail, parties=parties)  # fmt: skip


class RegistryWriter:
    """Conditional, linearisable changes to the live registry (see the module docstring)."""

    ATTEMPTS = 8
    WITHIN_S = 30.0

    def __init__(
        self, settings: Settings, follower: RegistryFollower, metrics: RegistryMetrics | None = None
    ) -> None:
        self.settings = settings
        self.follower = follower
        self.metrics = metrics
        self.topics = Topics(settings)
        self._producer: Producer | None = None
        self._lock = asyncio.Lock()

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def _fresh_producer(self) -> Producer:
        if self._producer is None:
            producer = make_producer(
                self.settings,
                transactional_id=f"{self.settings.registry_topic}.writer",
                client_id="ndxp-registry-writer",
                max_request_size=16 * 1024 * 1024,
            )
            try:
                await producer.start()  # takes the transactional id: fences any other writer
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def write(self, decide: Callable[[LiveRegistry], Proposal | None]) -> Proposal | None:
        """Decide on the registry read to its end, then write what was decided, atomically.

        ``decide`` raises an NdxpError (409, 400, 403…) to refuse, or returns None to write
        nothing. Kafka down: :class:`Unavailable` (503), nothing written.
        """
        async with self._lock:
            try:
                async with asyncio.timeout(self.WITHIN_S):
                    return await self._write(decide)
            except TimeoutError:
                raise Unavailable("Kafka did not take the registry change in time", retry_after=1) from None

    async def _write(self, decide: Callable[[LiveRegistry], Proposal | None]) -> Proposal | None:
        for attempt in range(self.ATTEMPTS):
            sent: list[asyncio.Future[Any]] = []
            try:
                fresh = self._producer is None
                producer = await self._fresh_producer()
                if fresh:
                    # Holding the id, nobody else can commit: read what earlier holders wrote. While
                    # we keep holding it, our own follower has all (a writer that took the id since
                    # fenced us, and our commit below fails: we then start over from here).
                    await self.follower.caught_up()
                proposal = decide(self.follower.live)
                if proposal is None:
                    return None
                async with producer.transaction():
                    topic = self.topics.registry().name
                    for e in proposal.entries:  # one at a time: each send awaits room in the batch
                        sent.append(await producer.send(topic, e.encode(), key=e.key))  # noqa: PERF401
                    sent.append(
                        await producer.send(self.topics.registry_changes().name, proposal.change.encode())
                    )
                last = [await s for s in sent][-2:] if proposal.entries else []
                if self.metrics is not None:
                    self.metrics.changes.labels(proposal.change.action, proposal.change.outcome).inc()
                if last:
                    await self.follower.reached({self.follower.tps[0]: last[0].offset + 1})
                return proposal
            except (ProducerFenced, IllegalOperation):
                # IllegalOperation: the fencing ended the transaction while its records were being
                # sent ("not in transaction"); the same case as a fenced commit.
                log.info("registry writer: another writer took over; deciding again on its state")
                _settle(sent)
                await self._drop_producer()
                # Two writers that keep taking the id from each other would never commit: wait a
                # random while, so that one of them finishes first.
                await asyncio.sleep(random.uniform(0.05, 0.25) * (attempt + 1))  # noqa: S311
            except KafkaError as exc:
                _settle(sent)
                await self._drop_producer()
                if attempt == self.ATTEMPTS - 1:
                    raise Unavailable(f"the registry change was not written: {exc}", retry_after=1) from exc
                await asyncio.sleep(0.2 * 2**attempt)
        raise Unavailable("the registry change was not written: other writers kept on", retry_after=1)

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except Exception as exc:  # a fenced producer may fail to stop cleanly
                log.debug("registry writer: old producer stop: %r", exc)


def _settle(futures: list[asyncio.Future[Any]]) -> None:
    """The records of a failed transaction: their errors are expected, never "never retrieved"."""
    for future in futures:
        future.add_done_callback(lambda f: None if f.cancelled() else f.exception())


def import_proposal(
    live: LiveRegistry,
    documents: list[tuple[str, str, dict[str, object]]],
    *,
    actor: str,
    replace: bool,
    action: str = "registry.import",
) -> Proposal | None:
    """Write every document that differs from the registry's (and with ``replace``, remove those the
    file lacks); None when nothing changes."""
    change = new_change(actor, action, f"{len(documents)} documents")
    entries = []
    wanted = set()
    for kind, id_, doc in documents:
        wanted.add((kind, id_))
        if live.doc(kind, id_) == doc:
            continue
        rev = live.rev(kind, id_) + 1
        entries.append(Entry(kind=kind, id=id_, rev=rev, doc=doc, change_id=change.change_id, at=change.at,
                             actor=actor))  # fmt: skip
    if replace:
        for (kind, id_), entry in live.entries.items():
            if (kind, id_) not in wanted and entry.doc is not None and kind not in ("service", "event"):
                gone = Entry(kind=kind, id=id_, rev=entry.rev + 1, doc=None, change_id=change.change_id,
                             at=change.at, actor=actor)  # fmt: skip
                entries.append(gone)
    if not entries:
        return None
    return Proposal(entries=entries, change=change)


def seed_documents(settings: Settings) -> list[tuple[str, str, dict[str, object]]]:
    """The demo's starting registry: ``NDXP_REGISTRY`` and the contracts of ``NDXP_SCHEMAS_DIR``."""
    raw = read_yaml(settings.registry_path)
    return documents_from_import(raw, Catalog.load(settings.schemas_dir), source=str(settings.registry_path))


async def seed_if_empty(
    settings: Settings, follower: RegistryFollower, metrics: RegistryMetrics | None = None
) -> bool:
    """Import the registry file and contracts into an empty live registry (exactly once, whoever
    of several parts tries at the same time). True if this call imported them."""
    if follower.live.applied:
        return False
    documents = seed_documents(settings)
    writer = RegistryWriter(settings, follower, metrics)
    try:
        done = await writer.write(
            lambda live: (
                None if live.applied else import_proposal(live, documents, actor="seed", replace=False)
            )
        )
    finally:
        await writer.stop()
    return done is not None
