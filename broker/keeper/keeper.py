"""`ndxp keeper`: finishes stored exchanges (async and idempotent) and delivers callbacks.

It consumes the exchanges topic in a consumer group (read_committed) and,
for each exchange of its partitions, applies the documents in log order:
a pending document opens the exchange (unless it is a claim that lost its
idempotency key), the adapter's reply is remembered, a final document closes
it (or, with a callback still to deliver, keeps it open for that).

- **Finishing.** An open exchange with a reply, or whose deadline has passed
  (plus ``GRACE_MS``) without one, gets its final document: the reply
  checked against the service's contract, as the gateway checks a sync
  answer. The final document and the exchange's transaction record (mode,
  outcome; day of acceptance) are written in **one Kafka transaction**
  with the group's offsets. The counter dedupes records by exchange id, so
  an exchange is counted once even if a keeper dies between two steps.
- **Offsets** are never committed past the first document of an exchange
  still open: a keeper that restarts (or takes over a partition) reads the
  open exchanges again, and acts only once it has caught up with the
  partition's end, so that it sees the final documents already written.
- **Callbacks** (async exchanges of agencies with a registered
  ``callback``): POSTed with an HMAC-SHA256 signature over
  ``<timestamp>.<body>``; retried with exponential backoff and jitter; each
  attempt's result is a new final document (``callback.state``,
  ``attempts``, ``error``), so retries survive restarts. After the last
  attempt the callback is dead-lettered (``<topic>.callbacks.dlq``),
  counted and shown in the exchange's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Collection

import aiohttp
import orjson
from aiokafka import ConsumerRebalanceListener, TopicPartition

from broker import egress
from broker.contracts.catalog import Catalog
from broker.contracts.registry import Registry
from broker.contracts.verdicts import finish
from broker.kafka import (
    Batch,
    KafkaService,
    Outgoing,
    Producer,
    Topics,
    Transactions,
    ensure_topics,
    make_consumer,
    make_producer,
    static_member,
    sweep_idle_topics,
)
from broker.kafka.registry import RegistryFollower
from broker.keeper import callbacks
from broker.keeper.ledger import Ledger, Open
from broker.metrics import KeeperMetrics
from broker.model.documents import H_DOC, CallbackState, Final, Pending
from broker.model.records import Mode, TxRecord
from broker.settings import Settings

log = logging.getLogger(__name__)
KEEPER_COMMIT_EVERY_S = 2.0
"""Offsets move on at least this often when nothing else is written."""
SWEEP_EVERY_S = 3600.0
"""How often the keeper looks for reply topics of gateway workers that are gone."""
CALLBACK_CONNECTIONS = 100
"""Connections to callback receivers in all (each agency has NDXP_CALLBACK_CONCURRENCY of them)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Attempted:
    """A callback attempt's result, to write in the next transaction: the exchange's new final document
    (its callback state) and, after the last attempt, the dead letter."""

    tp: TopicPartition
    final: Final
    dead_letter: Outgoing | None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, keeper: ExchangeKeeper) -> None:
        self.keeper = keeper

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self.keeper.ledger.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        consumer = self.keeper.consumer
        assert consumer is not None
        self.keeper.ledger.assigned(await consumer.end_offsets(list(assigned)) if assigned else {})


class ExchangeKeeper(KafkaService):
    """Finishes stored exchanges exactly once and delivers their callbacks at least once."""

    poll_timeout_ms = 200

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        registry: Registry,
        metrics: KeeperMetrics,
        follower: RegistryFollower | None = None,
    ) -> None:
        """``follower``: the live registry ``catalog`` and ``registry`` come from, started and
        stopped with the keeper (callback addresses and contracts follow it)."""
        super().__init__("exchange keeper")
        self.settings = settings
        self.catalog = catalog
        self.registry = registry
        self.follower = follower
        self.metrics = metrics
        self.topic = settings.exchanges_topic
        self.group_id = f"{self.topic}.keeper"
        self.topics = Topics(settings)
        self.dlq_topic = self.topics.callbacks_dlq().name
        self.ledger = Ledger(
            secret_of=lambda p: a.reply_secret if (a := self.registry.agencies.get(p)) is not None else None,
            on_forged=lambda p: self.metrics.forged_replies.labels(p).inc(),
        )
        """What is open and what is due: every decision of the keeper, no I/O."""
        self._results: list[_Attempted] = []
        """Callback attempts' results, to write in the next transaction."""
        self._deliveries: set[asyncio.Task[None]] = set()
        self._producer: Producer | None = None
        self._tx: Transactions | None = None
        self._session: aiohttp.ClientSession | None = None
        self._lanes: dict[str, asyncio.Semaphore] = {}
        """Callback deliveries in flight, per agency (NDXP_CALLBACK_CONCURRENCY each)."""
        self._committed: dict[TopicPartition, int] = {}
        self._commit_at = 0.0
        self._gauges_at = 0.0
        self._sweep_at = time.monotonic() + 60.0
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return super().healthy and (self.follower is None or self.follower.healthy)

    async def _open(self) -> None:
        if self.follower is not None:
            await self.follower.start()  # the whole registry, before the first exchange is finished
        await ensure_topics(
            self.settings, [self.topics.exchanges(), self.topics.callbacks_dlq(), self.topics.tx()]
        )
        self._producer = make_producer(
            self.settings,
            client_id="ndxp-keeper",
            transactional_id=f"{self.group_id}.{self.settings.instance_id}",
        )
        await self._producer.start()
        self._tx = Transactions(self._producer, self.group_id, "keeper")
        budget = self.settings.callback_timeout_s
        self._session = aiohttp.ClientSession(
            connector=egress.connector(
                self.settings.callback_allow_private,
                limit=CALLBACK_CONNECTIONS,
                per_host=self.settings.callback_concurrency,
            ),
            # Connecting and answering are the receiver's; waiting for a free connection is not.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=budget, sock_read=budget),
            headers={"User-Agent": "ndxp-callbacks"},
        )
        self.consumer = make_consumer(
            self.settings,
            group_id=self.group_id,
            client_id="ndxp-keeper",
            group_instance_id=static_member(self.settings),
            isolation_level="read_committed",
            fetch_max_wait_ms=100,
        )
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))

    async def _close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a sweep's error is logged by it
                await self._sweeper
        for task in list(self._deliveries):
            task.cancel()
        if self._deliveries:
            await asyncio.wait(self._deliveries, timeout=2.0)
        if self._results and self.consumer is not None:
            await self._write([])  # callback results in hand, before leaving
        await super()._close()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.follower is not None:
            await self.follower.stop()

    # -- reading the log ------------------------------------------------------

    async def _on_batch(self, batch: Batch) -> None:
        consumer = self.consumer
        assert consumer is not None
        for tp, messages in batch.items():
            for msg in messages:
                self.ledger.apply(tp, msg.offset, msg.headers or (), msg.value or b"")
        for tp in list(self.ledger.catching_up):
            self.ledger.read_to(tp, await consumer.position(tp))
        await self._act()

    # -- acting -----------------------------------------------------------------

    async def _act(self) -> None:
        work = self.ledger.due(time.time() * 1000)
        for tp, o in work.deliver:
            self._deliver(tp, o)
        if time.monotonic() >= self._sweep_at and (self._sweeper is None or self._sweeper.done()):
            self._sweep_at = time.monotonic() + SWEEP_EVERY_S
            self._sweeper = asyncio.create_task(self._sweep(), name="reply topic sweep")
        if time.monotonic() >= self._gauges_at:  # a walk over every open exchange: once a second
            self._gauges_at = time.monotonic() + 1.0
            waiting, callbacks = self.ledger.counts()
            self.metrics.pending.set(waiting)
            self.metrics.callbacks_pending.set(callbacks)
        if work.finish or self._results or time.monotonic() >= self._commit_at:
            await self._write(work.finish)

    async def _write(self, to_finish: list[tuple[TopicPartition, Open]]) -> None:
        """One transaction: final documents, their transaction records, callback results, offsets."""
        tx, consumer = self._tx, self.consumer
        assert tx is not None
        assert consumer is not None
        now = time.time() * 1000
        outgoing: list[Outgoing] = []
        finals: list[tuple[TopicPartition, Open, Final]] = []
        for tp, o in to_finish:
            assert o.pending is not None
            p = o.pending
            final = finish(p, self.catalog.get(p.provider, p.service, p.major), o.reply, now)
            agency = self.registry.agencies.get(p.client)
            if p.mode is Mode.ASYNC and agency is not None and agency.callback_url:
                final = dataclasses.replace(
                    final, callback={"state": CallbackState.PENDING, "attempts": 0, "next_at": now}
                )
            outgoing.append(_doc_out(tp, final))
            outgoing.append(Outgoing(self.settings.tx_topic, _record(p, final).encode()))
            finals.append((tp, o, final))
        results, self._results = self._results, []
        for done in results:
            outgoing.append(_doc_out(done.tp, done.final))
            if done.dead_letter is not None:
                outgoing.append(done.dead_letter)
        offsets = self.ledger.offsets()
        if not outgoing and offsets == self._committed:
            self._commit_at = time.monotonic() + KEEPER_COMMIT_EVERY_S
            return
        if not await tx.commit(outgoing, offsets):
            self.ledger.retry((tp, o) for tp, o, _ in finals)
            self._results = results + self._results
            return
        self._committed = offsets
        self._commit_at = time.monotonic() + KEEPER_COMMIT_EVERY_S
        for _, _, final in finals:
            self.metrics.finished.labels(final.provider, final.service, final.mode, final.status).inc()
        # The exchanges stay busy until their final documents are read back.

    async def _sweep(self) -> None:
        """Delete the reply topics of gateway workers that are gone (no heartbeat for long)."""
        try:
            gone = await sweep_idle_topics(
                self.settings, self.settings.names.reply_prefix, self.settings.reply_topic_idle_hours
            )
        except Exception as exc:  # a sweep that fails is tried again at the next round
            log.warning("keeper: reply topic sweep failed: %s", exc)
            return
        for topic in gone:
            log.warning("keeper: deleted reply topic %s (no gateway worker wrote to it for %dh)", topic,
                        self.settings.reply_topic_idle_hours)  # fmt: skip

    # -- callbacks --------------------------------------------------------------

    def _deliver(self, tp: TopicPartition, o: Open) -> None:
        assert o.final is not None
        agency = self.registry.agencies.get(o.final.client)
        task = asyncio.create_task(self._post(tp, o.final, agency.callback_url if agency else None,
                                              agency.callback_secrets if agency else ()))  # fmt: skip
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _post(
        self, tp: TopicPartition, final: Final, url: str | None, secrets: tuple[bytes, ...]
    ) -> None:
        assert final.callback is not None
        assert self._session is not None
        attempts = int(final.callback.get("attempts", 0)) + 1
        error: str | None
        refused = None if url is None else egress.refusal(url, self.settings.callback_allow_private)
        if url is None or not secrets:
            error = "the agency has no callback any more"
            attempts = self.settings.callback_attempts
        elif refused is not None:
            error, attempts = refused, self.settings.callback_attempts  # no retry changes the URL
        else:
            body = orjson.dumps(final.view())
            sent = callbacks.headers(final.exchange_id, secrets, str(int(time.time())), body, attempts)
            lane = self._lanes.setdefault(final.client, asyncio.Semaphore(self.settings.callback_concurrency))
            try:
                # A slow receiver holds its own agency's lane, not everyone's. Never follow a
                # redirect: the registry's URL is the only place callbacks go.
                async with (
                    lane,
                    self._session.post(url, data=body, headers=sent, allow_redirects=False) as resp,
                ):
                    error = None if 200 <= resp.status < 300 else egress.status_kind(resp.status)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = egress.error_kind(exc)
                log.info(
                    "keeper: callback of %s to %s failed: %r", final.exchange_id, url, exc
                )  # ours, in full
        callback = callbacks.after_attempt(
            attempts, error, max_attempts=self.settings.callback_attempts,
            first_backoff_s=self.settings.callback_backoff_s, now_ms=time.time() * 1000,
        )  # fmt: skip
        dead: Outgoing | None = None
        state = callback["state"]
        self.metrics.callbacks.labels("retry" if state is CallbackState.PENDING else state.value).inc()
        if state is CallbackState.FAILED:
            log.warning("keeper: callback of %s dead-lettered after %d attempts: %s", final.exchange_id,
                        attempts, error)  # fmt: skip
            dead = Outgoing(self.dlq_topic, orjson.dumps(final.view()), final.exchange_id.encode(),
                            [("ndxp-error", (error or "").encode())])  # fmt: skip
        self._results.append(_Attempted(tp, dataclasses.replace(final, callback=callback), dead))


def _doc_out(tp: TopicPartition, doc: Final) -> Outgoing:
    return Outgoing(
        tp.topic, doc.encode(), doc.exchange_id.encode(), [(H_DOC, b"final")], partition=tp.partition
    )


def _record(p: Pending, final: Final) -> TxRecord:
    body = orjson.dumps(final.body)
    return TxRecord(
        exchange_id=p.exchange_id,
        client=p.client,
        provider=p.provider,
        service=p.service,
        outcome=final.outcome,
        status=final.http_status,
        t_in=p.t_in,
        t_out=final.t_out,
        request_bytes=p.request_bytes,
        response_bytes=len(body),
        gateway="keeper",
        request_id=p.request_id,
        user_id=p.user_id,
        purpose=p.purpose,
        mode=p.mode,
        request_sha256=p.request_sha256,
        response_sha256=hashlib.sha256(body).hexdigest(),
        subject=p.subject,
    )
