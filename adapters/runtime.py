"""The adapter runtime: serves one provider agency over Kafka.

A consumer group ``ndxp.adapter.<provider>`` reads the provider's request
topics. Each polled batch (at most ``adapter_concurrency`` records) is
handled concurrently; then, in one Kafka transaction, the replies go to each
request's reply-to topic and the batch's offsets are committed. A crash
before the commit makes the batch come back and its replies vanish (the
gateway reads ``read_committed``), so no request acknowledged to the adapter
is lost and none is answered twice.

- A request past its deadline is skipped and counted (its caller is gone).
- A redelivered exchange id is answered from a bounded memory of recent
  replies, not processed again.
- A handler exception becomes a ``provider_error`` reply, never a crash.
- A message that cannot be decoded goes to ``ndxp.dlq.<provider>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry

from broker.envelope import (
    H_ERROR,
    Reply,
    ReplyOutcome,
    RequestMeta,
    dlq_topic,
    request_topic,
)
from broker.errors import problem_body
from broker.kafka import (
    Outgoing,
    TopicSpec,
    consumer_lag,
    ensure_topics,
    make_consumer,
    make_producer,
    poll,
    produce_and_commit,
)
from broker.metrics import AdapterMetrics
from broker.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """What a handler gets: the exchange metadata and the validated request body."""

    meta: RequestMeta
    body: Any


Handler = Callable[[Request], Awaitable[Any]]
"""A service handler: returns the JSON-serialisable answer, or raises BusinessError."""


class BusinessError(Exception):
    """A provider's own answer that is not a success (e.g. citizen not found).

    It passes through the gateway with ``status`` and this problem body.
    """

    def __init__(self, status: int, code: str, detail: str, title: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").capitalize()

    def problem(self, exchange_id: str) -> dict[str, Any]:
        return problem_body(self.status, self.code, self.title, self.detail, exchange_id)


@dataclass(frozen=True, slots=True)
class _Out(Outgoing):
    reply: Reply | None = None


def _problem(exchange_id: str, status: int, code: str, detail: str) -> bytes:
    return orjson.dumps(BusinessError(status, code, detail).problem(exchange_id))


class Adapter:
    """Serves the services of one provider agency from Kafka."""

    def __init__(
        self,
        settings: Settings,
        provider: str,
        handlers: Mapping[str, Handler],
        *,
        metrics: AdapterMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.handlers = dict(handlers)
        self.metrics = metrics or AdapterMetrics(CollectorRegistry())
        self.group_id = f"ndxp.adapter.{provider}"
        self.topics = [request_topic(provider, s) for s in sorted(self.handlers)]
        self._memory: OrderedDict[str, Reply] = OrderedDict()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.assigned = asyncio.Event()

    async def __aenter__(self) -> Adapter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Create the topics, join the group and start serving."""
        if self._task is not None:
            return
        await ensure_topics(
            self.settings,
            [TopicSpec(name=t, partitions=4) for t in self.topics]
            + [TopicSpec(name=dlq_topic(self.provider))],
        )
        self._producer = make_producer(
            self.settings,
            client_id=f"ndxp-adapter-{self.provider}",
            transactional_id=f"ndxp.adapter.{self.provider}.{self.settings.instance_id}",
        )
        await self._producer.start()
        self._consumer = make_consumer(
            self.settings,
            group_id=self.group_id,
            client_id=f"ndxp-adapter-{self.provider}",
            isolation_level="read_committed",
            max_poll_records=self.settings.adapter_concurrency,
            # A long poll returns as soon as a request arrives; a long wait
            # only saves idle fetches (and broker CPU), it adds no latency.
            fetch_max_wait_ms=200,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )
        await self._consumer.start()
        self._consumer.subscribe(self.topics)
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"adapter:{self.provider}")

    async def stop(self) -> None:
        """Finish the batch in hand, commit it, leave the group."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def wait_assigned(self, within_s: float = 30.0) -> None:
        """Wait until the consumer group gave this adapter its partitions."""
        async with asyncio.timeout(within_s):
            await self.assigned.wait()

    async def _run(self) -> None:
        consumer, producer = self._consumer, self._producer
        assert consumer is not None
        assert producer is not None
        while not self._stopping.is_set():
            batch = await poll(consumer, f"adapter {self.provider}", timeout_ms=100)
            if consumer.assignment():
                self.assigned.set()
            self.metrics.consumer_lag.labels(self.provider).set(await consumer_lag(consumer))
            if not batch:
                continue
            handled = await asyncio.gather(
                *(self._handle(msg) for messages in batch.values() for msg in messages)
            )
            outs = [out for outs_of_one in handled for out in outs_of_one]
            if await produce_and_commit(
                producer, consumer, self.group_id, batch, outs, f"adapter {self.provider}"
            ):
                for out in outs:
                    if out.reply is not None:
                        self._remember(out.reply)

    def _remember(self, reply: Reply) -> None:
        self._memory[reply.exchange_id] = reply
        self._memory.move_to_end(reply.exchange_id)
        while len(self._memory) > self.settings.adapter_dedupe_size:
            self._memory.popitem(last=False)

    def _dead_letter(self, msg: Any, reason: str) -> _Out:
        self.metrics.dead_letters.labels(self.provider).inc()
        log.warning("%s: dead letter from %s@%s: %s", self.provider, msg.topic, msg.offset, reason)
        headers = [*list(msg.headers or ()), (H_ERROR, reason.encode())]
        return _Out(dlq_topic(self.provider), msg.value or b"", msg.key, headers)

    async def _handle(self, msg: Any) -> list[_Out]:
        try:
            meta = RequestMeta.from_headers(msg.headers or ())
        except (ValueError, UnicodeDecodeError) as exc:
            return [self._dead_letter(msg, f"undecodable headers: {exc}")]
        remembered = self._memory.get(meta.exchange_id)
        if remembered is not None:
            self.metrics.redelivered.labels(self.provider).inc()
            return [self._reply_out(meta, remembered)]
        if meta.expired():
            self.metrics.expired.labels(self.provider, meta.service).inc()
            return []
        reply = await self._call(meta, msg.value)
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
        return [self._reply_out(meta, reply)]

    def _reply_out(self, meta: RequestMeta, reply: Reply) -> _Out:
        return _Out(meta.reply_to, reply.body, meta.exchange_id.encode(), reply.headers(), reply)

    async def _call(self, meta: RequestMeta, raw: bytes | None) -> Reply | None:
        eid = meta.exchange_id
        handler = self.handlers.get(meta.service)
        labels = (self.provider, meta.service)
        if handler is None:
            self.metrics.requests.labels(*labels, "provider_error").inc()
            body = _problem(eid, 502, "provider_error", f"{self.provider} has no {meta.service}")
            return Reply(exchange_id=eid, status=502, outcome=ReplyOutcome.PROVIDER_ERROR, body=body)
        try:
            request = Request(meta=meta, body=orjson.loads(raw or b""))
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
