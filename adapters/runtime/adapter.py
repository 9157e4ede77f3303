"""The adapter runtime: serves one provider agency over Kafka.

A consumer in group ``ndxp.adapter.<provider>`` reads the provider's two
request topics, ``ndxp.req.<provider>.lookups`` and ``….writes``, whatever
the number of its services: the service is a header (``ndxp``:
``NDXP_TOPIC_PREFIX``, as in every topic and group name; decision 0012).
Delivery follows each service's declared effects (DESIGN §2):

- **Lookups** (``effects: read``, the default) are served at least once,
  without stop-and-wait: every record gets its own task as soon as it is
  polled, its reply is produced as soon as its handler returns, and a
  committer commits each partition's offset up to its oldest record still in
  progress, once ``LOOKUP_COMMIT_AFTER`` (32) are done or every
  ``LOOKUP_COMMIT_EVERY_S`` (1 s). A crash redelivers at most what was in
  progress or not yet committed; the gateway ignores a second reply for the
  same exchange. At most ``adapter_concurrency`` run at once, and at
  most ``adapter_service_concurrency`` of one service: the others of a busy
  service wait their turn in memory (in order; one past its deadline is
  dropped at once, counted as expired) while other services' go on, so a
  slow or backlogged service does not hold up the rest. The consumer stops
  fetching while ``adapter_backlog`` records are held.
- **Writes** (``effects: write``) are served exactly once: a batch of write
  requests is handled, then its replies, the changes its handlers recorded
  (``Request.record_change`` → ``ndxp.data.<provider>``) and its offsets go
  out in one Kafka transaction. A failed transaction is retried with the same
  results; a crash before the commit leaves nothing visible
  (``read_committed``) and the batch is processed again.

Also:

- A request past its deadline is skipped and counted (its caller is gone).
- A redelivered exchange id is answered from a bounded memory of recent
  replies, not processed again. Exchange ids are assigned by the gateway only.
- A handler exception becomes a ``provider_error`` reply, never a crash.
- A message that cannot be decoded goes to ``ndxp.dlq.<provider>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import ConsumerRebalanceListener, TopicPartition
from prometheus_client import CollectorRegistry

from adapters.runtime.decisions import DeadLetter, Expired, Replay, ReplyMemory, Turns, change_records, triage
from adapters.runtime.request import Change, Handler, Request
from broker.contracts.catalog import Catalog, Effects
from broker.errors import BusinessError, TransactionFenced
from broker.kafka import (
    Batch,
    KafkaService,
    OffsetTracker,
    Outgoing,
    Producer,
    Record,
    Topics,
    Transactions,
    Written,
    consumer_lag,
    ensure_topics,
    make_consumer,
    make_producer,
    static_member,
)
from broker.kafka.routing import LeaderWatch
from broker.kafka.topics import WRITE_REPLY_PARTITION
from broker.metrics import AdapterMetrics
from broker.model.envelope import (
    H_DEADLINE,
    H_ERROR,
    H_ORIGIN,
    H_SERVICE,
    Reply,
    ReplyOutcome,
    RequestMeta,
    now_ms,
    reply_mac,
)
from broker.settings import Settings

log = logging.getLogger(__name__)
LOOKUP_COMMIT_EVERY_S = 1.0
"""How often a lookup adapter commits its offsets at the most, or as soon as
``LOOKUP_COMMIT_AFTER`` requests are done (checked every ``TURNS_EVERY_S``): what a crash redelivers
(lookups, served again, their second reply ignored) stays bounded by a count, and a quiet provider
commits once a second. Each commit is a write to Kafka per provider: every 0.1 s, 100 providers'
adapters made up to 1,000 a second, the biggest part of Kafka's CPU at 1,000 services."""
LOOKUP_COMMIT_AFTER = 32
"""Lookups done since the last commit that make the next one due at once."""
TURNS_EVERY_S = 0.1
"""How often waiting requests are looked at for a deadline that passed."""
WRITE_BATCH = 256
"""Most write requests in one transaction."""


@dataclass(frozen=True, slots=True)
class _Out(Outgoing):
    reply: Reply | None = None
    deadline_ms: int = 0
    """The deadline of the request ``reply`` answers (how long the reply memory keeps it)."""


def _lane(msg: Record) -> tuple[str, int]:
    """A request's service and deadline, from its headers (what waits its turn, and until when); a
    header that is missing or not a number is left to the handling's checks."""
    service, deadline = "", 0
    for key, value in msg.headers or ():
        if key == H_SERVICE and value:
            service = value.decode(errors="replace")
        elif key == H_DEADLINE and value and value.isdigit():
            deadline = int(value)
    return service, deadline


def _problem(exchange_id: str, status: int, code: str, detail: str) -> bytes:
    return orjson.dumps(BusinessError(status, code, detail).problem(exchange_id))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self.adapter._release(revoked)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self.adapter.assigned.set()


class Adapter(KafkaService):
    """Serves the services of one provider agency from Kafka."""

    def __init__(
        self,
        settings: Settings,
        provider: str,
        handlers: Mapping[str, Handler],
        *,
        writes: Collection[str] | None = None,
        metrics: AdapterMetrics | None = None,
        producer: Producer | None = None,
    ) -> None:
        """``writes``: the services with side effects (default: as the catalog declares them).
        ``producer``: a started producer to share for lookup replies (default: one of its own).
        """
        super().__init__(f"adapter {provider}")
        self.settings = settings
        self.provider = provider
        self.handlers = dict(handlers)
        if writes is None:
            catalog = Catalog.load(settings.schemas_dir)
            writes = [s.service for s in catalog.of_provider(provider) if s.effects is Effects.WRITE]
        self.writes = frozenset(writes) & set(self.handlers)
        self.metrics = metrics or AdapterMetrics(CollectorRegistry())
        self.names = names = settings.names
        self.group_id = names.adapter_group(provider)
        self._requests = [names.requests(provider), names.requests(provider, write=True)]
        self.topics = self._requests if self.handlers else []
        self._memory = ReplyMemory(settings.adapter_dedupe_size, int(settings.adapter_dedupe_mb * 2**20))
        self._shared_producer = producer
        self._producer: Producer | None = None
        self._leaders: LeaderWatch | None = None
        self._txn_producer: Producer | None = None
        self._tx: Transactions | None = None
        self._offsets = OffsetTracker()
        self._done_since_commit = 0
        self._held = 0
        """Records polled and not yet finished (running, waiting their service's turn, or writes)."""
        self._turns: Turns[tuple[TopicPartition, Record]] = Turns(
            settings.adapter_concurrency, settings.adapter_service_concurrency
        )
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._write_queue: asyncio.Queue[Any] = asyncio.Queue()
        self._write_idle = asyncio.Event()
        self._write_idle.set()
        self.assigned = asyncio.Event()

    async def update(self, handlers: Mapping[str, Handler]) -> None:
        """Serve ``handlers`` from now on (a binding was published, changed or withdrawn): what is in
        flight finishes with the handler it started with; new services' topics are subscribed to.
        Services added this way are served on the lookup lane (at least once, the exchange id sent to
        the backend to dedupe by)."""
        self.handlers = dict(handlers)
        self.writes = self.writes & set(self.handlers)
        topics = self._requests if self.handlers else []
        if topics == self.topics:
            return
        await ensure_topics(self.settings, Topics(self.settings).requests(self.provider))
        self.topics = topics
        if self.consumer is not None:
            if topics:
                self.consumer.subscribe(topics, listener=_Rebalance(self))
            else:
                self.consumer.unsubscribe()

    async def wait_assigned(self, within_s: float = 30.0) -> None:
        """Wait until the consumer group gave this adapter its partitions (at once: it serves nothing)."""
        if not self.topics:
            return
        async with asyncio.timeout(within_s):
            await self.assigned.wait()

    # -- lifecycle ---------------------------------------------------------

    async def _open(self) -> None:
        topics = Topics(self.settings)
        specs = [*topics.requests(self.provider), topics.dlq(self.provider)]
        if self.writes:
            specs.append(topics.data(self.provider))
            events = topics.events(Catalog.load(self.settings.schemas_dir), self.provider)
            if events:  # events published by writes are counted: their records go to the tx topic
                specs.extend([*events, topics.tx()])
        await ensure_topics(self.settings, specs)
        if self._shared_producer is None:
            self._producer = make_producer(self.settings, client_id=f"ndxp-adapter-{self.provider}")
            await self._producer.start()
        if self.writes:
            self._txn_producer = make_producer(
                self.settings,
                client_id=f"ndxp-adapter-{self.provider}-tx",
                transactional_id=f"{self.group_id}.{self.settings.instance_id}",
            )
            await self._txn_producer.start()
            self._tx = Transactions(self._txn_producer, self.group_id, self.what)
        self.consumer = make_consumer(
            self.settings,
            group_id=self.group_id,
            client_id=f"ndxp-adapter-{self.provider}",
            group_instance_id=static_member(self.settings),
            # Requests are written without transactions; committed reads cost nothing extra.
            isolation_level="read_committed",
            max_poll_records=self.settings.adapter_concurrency,
            # A long poll returns as soon as a request arrives; a long wait
            # only saves idle fetches (and broker CPU), it adds no latency.
            fetch_max_wait_ms=500,
            session_timeout_ms=10_000,
            # Static members: a restart takes its partitions back without waiting for the session
            # to expire, so a heartbeat every 3 s (a third of the session) is enough.
            heartbeat_interval_ms=3_000,
        )
        await self.consumer.start()
        if self.topics:  # none yet: a provider whose bindings are still to be published or compiled
            self.consumer.subscribe(self.topics, listener=_Rebalance(self))
        self.spawn(self._committer(), "committer")
        self.spawn(self._expiry(), "expiry")
        if self.writes:
            self.spawn(self._write_lane(), "writes")

    async def _close(self) -> None:
        """Finish what is in hand (replies and commits), then leave the group."""
        grace = self.settings.shutdown_grace_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                if self._tasks:
                    await asyncio.wait(list(self._tasks))
                await self._write_idle.wait()
        await self._stop_helpers()
        tasks = list(self._tasks)  # a task leaves the set as it ends
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.consumer is not None:
            await self._commit_lookups()
        await super()._close()
        for producer in (self._producer, self._txn_producer):
            if producer is not None:
                await producer.stop()
        self._producer = self._txn_producer = None

    async def _release(self, revoked: Collection[TopicPartition]) -> None:
        """Partitions move to another member: commit what is done, finish the open transaction."""
        await self._commit_lookups(revoked)
        await self._write_idle.wait()
        self._offsets.forget(revoked)
        gone = set(revoked)
        self._freed(self._turns.drop(lambda item: item[0] not in gone))  # the new owner reads them again

    # -- the poll loop ------------------------------------------------------

    async def _capacity(self) -> int:
        """Backpressure: poll only for as many records as there is room for."""
        backlog = self.settings.adapter_backlog
        while self._held >= backlog and not self.stopping:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._room.wait()
        return max(1, min(self.settings.adapter_concurrency, backlog - self._held))

    async def _on_batch(self, batch: Batch) -> None:
        for tp, messages in batch.items():
            # A write on the exactly-once lane; without one (no write service has code here: a bound
            # one's backend dedupes by exchange id), on the lookups' lane.
            write = tp.topic == self._requests[1] and self._tx is not None
            for msg in messages:
                self._held += 1
                if write:
                    self._write_idle.clear()
                    self._write_queue.put_nowait(msg)
                    continue
                self._offsets.fetched(tp, msg.offset)
                service, deadline = _lane(msg)
                if self._turns.admit(service, (tp, msg), deadline):
                    self._run(tp, msg, service)

    def _run(self, tp: TopicPartition, msg: Record, service: str) -> None:
        task = asyncio.create_task(self._serve_lookup(tp, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._ran(service))

    def _ran(self, service: str) -> None:
        self._turns.done(service)
        self._freed()
        self._next_turns()

    def _next_turns(self, *, expired: bool = False) -> None:
        """Start what may run now (``expired``: and every waiting request past its deadline)."""
        if self._turns.waiting and not self.stopping:  # stopping: what waits is left uncommitted
            now = now_ms()
            due = self._turns.expired(now) if expired else []
            for service, (tp, msg) in [*due, *self._turns.ready(now)]:
                self._run(tp, msg, service)

    def _freed(self, n: int = 1) -> None:
        self._held -= n
        self._room.set()

    # -- lookups: at least once ---------------------------------------------

    async def _send(self, producer: Producer, out: Outgoing) -> asyncio.Future[Written]:
        """A reply to a gateway worker goes to a partition of its topic whose leader answers (the
        worker reads them all, by exchange id); anything else where its key or partition says."""
        headers = out.headers or None
        if isinstance(out, _Out) and out.reply is not None and out.partition is None:
            if self._leaders is None or self._leaders.producer is not producer:
                self._leaders = LeaderWatch(producer)
            # Not the partition of writes' replies: a lookup's there would wait for their transactions.
            spare = WRITE_REPLY_PARTITION
            return await self._leaders.send(out.topic, out.value, key=out.key, headers=headers, spare=spare)
        return await producer.send(
            out.topic, out.value, key=out.key, headers=headers, partition=out.partition
        )

    async def _serve_lookup(self, tp: TopicPartition, msg: Record) -> None:
        producer = self._shared_producer or self._producer
        assert producer is not None
        outs = await self._handle(msg, changes=False)
        delay = 0.1
        while True:
            try:
                deliveries = [await self._send(producer, o) for o in outs]
                for delivery in deliveries:
                    await delivery
                break
            except Exception as exc:
                if self.stopping:
                    # Left uncommitted: the next member answers it.
                    log.warning("%s: reply to %s not sent before stop: %s", self.what, msg.offset, exc)
                    return
                log.warning("%s: sending a reply failed (%s); retrying", self.what, exc)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
        self._remember(outs)
        self._offsets.done(tp, msg.offset)
        self._done_since_commit += 1

    async def _expiry(self) -> None:
        """Waiting requests whose deadline passed go at once (a commit that waits holds nothing up)."""
        while True:
            await asyncio.sleep(TURNS_EVERY_S)
            self._next_turns(expired=True)

    async def _committer(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        lag_at = commit_at = 0.0
        while True:
            await asyncio.sleep(TURNS_EVERY_S)
            if self._done_since_commit >= LOOKUP_COMMIT_AFTER or time.monotonic() >= commit_at:
                commit_at = time.monotonic() + LOOKUP_COMMIT_EVERY_S
                self._done_since_commit = 0
                await self._commit_lookups()
            if time.monotonic() >= lag_at:
                lag_at = time.monotonic() + 1.0
                self.metrics.consumer_lag.labels(self.provider).set(await consumer_lag(consumer))

    async def _commit_lookups(self, only: Collection[TopicPartition] | None = None) -> None:
        assert self.consumer is not None
        offsets = self._offsets.committable(only)
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:  # e.g. a rebalance in progress: the next round retries
            log.warning("%s: offset commit failed: %s", self.what, exc)
            return
        self._offsets.committed(offsets)

    # -- writes: exactly once -----------------------------------------------

    async def _write_lane(self) -> None:
        while True:
            batch = [await self._write_queue.get()]
            while len(batch) < WRITE_BATCH and not self._write_queue.empty():
                batch.append(self._write_queue.get_nowait())
            try:
                await self._write_batch(batch)
            except TransactionFenced as exc:
                log.critical("%s; stopping", exc)
                self.request_stop(exc)
                raise
            finally:
                self._freed(len(batch))
                if self._write_queue.empty():
                    self._write_idle.set()

    async def _write_batch(self, batch: list[Record]) -> None:
        tx, consumer = self._tx, self.consumer
        assert tx is not None
        assert consumer is not None
        handled = await asyncio.gather(*(self._handle(msg, changes=True) for msg in batch))
        outs = [out for outs_of_one in handled for out in outs_of_one]
        offsets: dict[TopicPartition, int] = {}
        for msg in batch:
            tp = TopicPartition(msg.topic, msg.partition)
            offsets[tp] = max(offsets.get(tp, 0), msg.offset + 1)
        # Until it commits, the same results go again: handlers recorded their changes, not applied them.
        while not await tx.commit(outs, offsets):
            pass
        self._remember(outs)

    # -- one request ----------------------------------------------------------

    def _remember(self, outs: list[Outgoing]) -> None:
        """Keep the replies that went out, to answer a redelivered exchange without processing it."""
        self._memory.remember(
            (out.reply, out.deadline_ms) for out in outs if isinstance(out, _Out) and out.reply is not None
        )

    def _dead_letter(self, msg: Record, reason: str) -> _Out:
        self.metrics.dead_letters.labels(self.provider).inc()
        log.warning("%s: dead letter from %s@%s: %s", self.provider, msg.topic, msg.offset, reason)
        headers = [(k, v) for k, v in (msg.headers or ()) if isinstance(v, bytes)]
        headers.append((H_ERROR, reason.encode()))
        return _Out(self.names.dlq(self.provider), msg.value or b"", msg.key, headers)

    async def _handle(self, msg: Record, *, changes: bool) -> list[Outgoing]:
        decided = triage(msg.headers or (), self._memory)
        if isinstance(decided, DeadLetter):
            return [self._dead_letter(msg, decided.reason)]
        if isinstance(decided, Replay):
            self.metrics.redelivered.labels(self.provider).inc()
            return [self._reply_out(decided.meta, decided.reply)]
        meta = decided.meta
        if isinstance(decided, Expired):
            self.metrics.expired.labels(self.provider, meta.service).inc()
            return []
        recorded: list[Change] | None = [] if changes else None
        reply = await self._call(meta, msg.value, recorded)
        if reply is None:
            # Tell the caller at once rather than let it wait for its timeout.
            eid = meta.exchange_id
            failed = Reply(
                exchange_id=eid,
                status=502,
                outcome=ReplyOutcome.PROVIDER_ERROR,
                body=_problem(eid, 502, "provider_error", "request body is not valid JSON"),
            )
            return [
                self._dead_letter(msg, "request body is not valid JSON"),
                self._reply_out(meta, failed),
            ]
        outs: list[Outgoing] = [self._reply_out(meta, reply)]
        if recorded and reply.outcome is ReplyOutcome.OK:
            outs.extend(change_records(self.names, self.settings.tx_topic, self.provider, meta, recorded))
        return outs

    def _reply_out(self, meta: RequestMeta, reply: Reply) -> _Out:
        headers = reply.headers()
        if self.settings.reply_secret:  # a member's adapter: its proof of origin
            mac = reply_mac(self.settings.reply_secret.encode(), reply.exchange_id, reply.status,
                            reply.outcome.value, reply.body)  # fmt: skip
            headers.append((H_ORIGIN, mac.encode()))
        return _Out(
            meta.reply_to,
            reply.body,
            meta.exchange_id.encode(),
            headers,
            partition=meta.reply_partition,
            reply=reply,
            deadline_ms=meta.deadline_ms,
        )

    async def _call(self, meta: RequestMeta, raw: bytes | None, changes: list[Change] | None) -> Reply | None:
        eid = meta.exchange_id
        handler = self.handlers.get(meta.service)
        labels = (self.provider, meta.service)
        if handler is None:
            self.metrics.requests.labels(*labels, "provider_error").inc()
            body = _problem(eid, 502, "provider_error", f"{self.provider} has no {meta.service}")
            return Reply(exchange_id=eid, status=502, outcome=ReplyOutcome.PROVIDER_ERROR, body=body)
        try:
            request = Request(meta=meta, body=orjson.loads(raw or b""), changes=changes)
        except orjson.JSONDecodeError:
            return None
        started = time.perf_counter()
        try:
            result = await handler(request)
            reply = Reply(exchange_id=eid, status=200, outcome=ReplyOutcome.OK, body=orjson.dumps(result))
        except BusinessError as exc:
            reply = Reply(
                exchange_id=eid,
                status=exc.status,
                outcome=ReplyOutcome.BUSINESS_ERROR,
                body=orjson.dumps(exc.problem(eid)),
            )
        except Exception as exc:
            log.exception("%s/%s: handler failed for %s", self.provider, meta.service, eid)
            detail = f"{self.provider}/{meta.service} failed: {type(exc).__name__}"
            reply = Reply(
                exchange_id=eid,
                status=502,
                outcome=ReplyOutcome.PROVIDER_ERROR,
                body=_problem(eid, 502, "provider_error", detail),
            )
        self.metrics.handler.labels(*labels).observe(time.perf_counter() - started)
        self.metrics.requests.labels(*labels, reply.outcome.value).inc()
        return reply
