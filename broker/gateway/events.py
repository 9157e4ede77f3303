"""Events at the gateway: ``GET /v1/events``, publish (``POST``) and subscribe (``GET``, Server-Sent Events).

- **Publish**: the owning provider's key, the event type's rights, its JSON
  Schema; the event is acknowledged by Kafka (acks=all) before ``202
  {"event_id"}``, and counted (a transaction record of mode ``event``).
- **Subscribe**: an allowed client, ``Accept: text/event-stream``. Each
  stream has its own Kafka consumer, assigned every partition of the type's
  topic and reading ``read_committed`` (events a write-effect service
  published in an aborted transaction never show). It starts from
  ``Last-Event-ID`` when given, else from ``?from=<RFC 3339 time>``, else
  from the subscriber's durable position (its own consumer group, committed
  every second and when the stream ends), else from the start of the
  topic's retention. A comment line every ``STREAM_HEARTBEAT_S`` keeps proxies from
  cutting an idle stream. A slow subscriber only slows its own stream (the
  writes wait for its socket; nobody else waits for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import orjson
from aiohttp import web
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from broker.contracts.catalog import EventType
from broker.contracts.registry import Agency
from broker.errors import AccessDenied, InvalidRequest, NotFound, PayloadTooLarge, Unavailable
from broker.gateway.auth import authenticate, recheck
from broker.gateway.exchange import read_body, validated
from broker.gateway.middleware import header, purpose
from broker.gateway.state import GATEWAY, Gateway
from broker.kafka import Consumer, make_consumer, topic_partitions
from broker.model.events import (
    decode_positions,
    delivered_record,
    encode_positions,
    envelope,
    parse_time,
    published_record,
    sse,
    sse_control,
)

log = logging.getLogger(__name__)
STREAM_HEARTBEAT_S = 15.0
SETUP_WITHIN_S = 10.0
"""Longest a stream may take to be set up (consumer, partitions, position) before it answers 503."""
STREAM_COMMIT_EVERY_S = 1.0
BATCH = 500


async def list_events(request: web.Request) -> web.Response:
    """``GET /v1/events``: every event type with its schema, key and examples."""
    gw = request.app[GATEWAY]
    events = [e.describe() for e in gw.catalog.events.values()]
    return web.Response(body=orjson.dumps({"events": events}), content_type="application/json")


def _allowed(request: web.Request, right: str) -> tuple[Gateway, Agency, EventType]:
    """The gateway, the authenticated caller and the event type, once the caller may ``right`` it."""
    gw = request.app[GATEWAY]
    agency = authenticate(gw, request)
    provider, type_ = request.match_info["provider"], request.match_info["type"]
    ev = gw.catalog.event(provider, type_)
    if ev is None:
        raise NotFound(f"no event type {provider}/{type_}; see GET /v1/events")
    allowed = gw.registry.may_publish if right == "publish" else gw.registry.may_subscribe
    if not allowed(agency.id, ev.provider, ev.type):
        raise AccessDenied(f"{agency.id} may not {right} {'to ' if right == 'subscribe' else ''}{ev.name}")
    return gw, agency, ev


async def publish(request: web.Request) -> web.Response:
    """``POST /v1/events/{provider}/{type}``: publish one event (the provider only)."""
    gw, agency, ev = _allowed(request, "publish")
    limit = gw.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body limit is {limit} bytes")
    with gw.limits.admit(agency):
        body = await read_body(request, limit, gw.settings.body_timeout_s)
        data = validated(ev.schema, body)
        key = str(data[ev.key])
        event_id, value, t_ms = envelope(
            provider=ev.provider, type_=ev.type, key=key, data=data,
            purpose=purpose(request),  # the publisher's officer (X-NDXP-User-Id) is not fanned out
        )  # fmt: skip
        rec = published_record(event_id, ev.provider, ev.type, t_ms, body)

        async def counted() -> None:
            gw.metrics.events_published.labels(ev.provider, ev.type).inc()
            # The event is durable: a record that cannot be written is counted lost (alerted on), not undone.
            await gw.recorder.write(rec, gw.recorder.within_s)

        # Answered 503 yet acknowledged later (the producer sends it again), it is counted then.
        topic = gw.settings.names.events(ev.provider, ev.type)
        await gw.hand_off(topic, value, what="the event", key=key.encode(), if_late=counted)
    await counted()
    return web.Response(
        status=202, body=orjson.dumps({"event_id": event_id}), content_type="application/json"
    )


async def subscribe(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events/{provider}/{type}`` with ``Accept: text/event-stream``: a live stream."""
    gw, agency, ev = _allowed(request, "subscribe")
    if "text/event-stream" not in (header(request, "Accept") or ""):
        raise InvalidRequest("subscribe with 'Accept: text/event-stream' (Server-Sent Events)")
    last = header(request, "Last-Event-ID")
    try:
        resume = decode_positions(last) if last else None
        since = parse_time(request.query["from"]) if "from" in request.query else None
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    with gw.limits.stream(agency):
        return await _serve(gw, request, agency, ev, resume, since, recheck(gw, request, agency))


async def _serve(
    gw: Gateway,
    request: web.Request,
    agency: Agency,
    ev: EventType,
    resume: dict[int, int] | None,
    since: float | None,
    still_valid: Callable[[], str | None],
) -> web.StreamResponse:
    consumer = make_consumer(
        gw.settings,
        group_id=gw.settings.names.subscriber_group(agency.id, ev.provider, ev.type),
        client_id=f"ndxp-sse-{agency.id}",
        isolation_level="read_committed",
        fetch_max_wait_ms=100,
        max_poll_records=BATCH,
    )
    try:
        # Bounded: a stream that cannot be set up releases its consumer and its slot.
        async with asyncio.timeout(SETUP_WITHIN_S):
            await consumer.start()
            tps = await topic_partitions(consumer, gw.settings.names.events(ev.provider, ev.type))
            consumer.assign(tps)
            await _position(consumer, tps, resume, since)
            positions = {tp.partition: await consumer.position(tp) for tp in tps}
    except (KafkaError, TimeoutError) as exc:
        log.warning("event stream of %s on %s could not be opened: %r", agency.id, ev.name, exc)
        await consumer.stop()
        raise Unavailable("the event stream could not be opened; retry shortly", retry_after=1) from exc
    except BaseException:
        await consumer.stop()
        raise
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    stream = _Stream(gw, agency, ev, consumer, positions, still_valid)
    gw.streams.add(stream)
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 1000\n: subscribed to " + ev.name.encode() + b"\n\n")
        await stream.run(request, resp)
    except (ConnectionError, asyncio.CancelledError):
        pass  # the subscriber went away, or the gateway is stopping
    finally:
        gw.streams.discard(stream)
        await stream.close()
    return resp


async def _position(
    consumer: Consumer, tps: list[TopicPartition], resume: dict[int, int] | None, since: float | None
) -> None:
    if resume is not None:
        unknown = set(resume) - {tp.partition for tp in tps}
        if unknown:
            raise InvalidRequest("Last-Event-ID names partitions this stream does not have")
        firsts, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        for tp in tps:
            at = resume.get(tp.partition)
            if at is not None and not firsts[tp] <= at <= ends[tp]:
                # Past the end would wait for offsets that do not exist yet (or overflow the client),
                # before the beginning would silently replay the whole retention: neither is a resume.
                raise InvalidRequest(
                    f"Last-Event-ID is outside this stream: partition {tp.partition} holds "
                    f"{firsts[tp]}..{ends[tp]}; subscribe without it (or with ?from=) to start again"
                )
        for tp in tps:
            if tp.partition in resume:
                consumer.seek(tp, resume[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        return
    if since is not None:
        found = await consumer.offsets_for_times({tp: int(since) for tp in tps})
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            hit = found.get(tp)
            consumer.seek(tp, hit.offset if hit is not None else ends[tp])
        return
    for tp in tps:
        committed = await consumer.committed(tp)
        if committed is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, committed)


class _Stream:
    """One subscriber's live stream: read, write, commit its position, count what it delivered."""

    def __init__(
        self,
        gw: Gateway,
        agency: Agency,
        ev: EventType,
        consumer: Consumer,
        positions: dict[int, int],
        still_valid: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.gw, self.agency, self.ev, self.consumer = gw, agency, ev, consumer
        self.still_valid = still_valid
        """Why the credential no longer holds (revoked, expired), or None: checked before every write."""
        self.opened = time.monotonic()
        self.positions = positions
        self.committed = dict(positions)
        self.delivered = 0
        """Events written since the last record of deliveries."""
        self.stopping = asyncio.Event()
        self.topic = gw.settings.names.events(ev.provider, ev.type)

    async def run(self, request: web.Request, resp: web.StreamResponse) -> None:
        metrics = self.gw.metrics
        labels = (self.agency.id, self.ev.provider, self.ev.type)
        last_write = commit_at = time.monotonic()
        while not self.stopping.is_set():
            if request.transport is None or request.transport.is_closing():
                return  # the subscriber hung up: free its stream now, not at the next heartbeat
            batch = await self.consumer.getmany(timeout_ms=1000, max_records=BATCH)
            now = time.monotonic()
            # Before anything is written: the key, the agency and the right as the registry has them
            # now (a poll is at most a second: a revocation ends the stream within one).
            ended = self._ended(now)
            if ended is not None:
                await resp.write(ended)
                return
            chunks: list[bytes] = []
            for tp, messages in batch.items():
                for msg in messages:
                    self.positions[tp.partition] = msg.offset + 1
                    chunks.append(sse(encode_positions(self.positions), self.ev.name, msg.value or b"{}"))
            if chunks:
                await resp.write(b"".join(chunks))  # waits for this subscriber's socket only
                self.delivered += len(chunks)
                metrics.events_delivered.labels(*labels).inc(len(chunks))
                last_write = now
            elif now - last_write >= STREAM_HEARTBEAT_S:
                await resp.write(b": keep-alive\n\n")
                last_write = now
            if now - commit_at >= STREAM_COMMIT_EVERY_S:
                commit_at = now
                await self.commit()
                lag = sum(
                    max(0, (self.consumer.highwater(TopicPartition(self.topic, p)) or 0) - o)
                    for p, o in self.positions.items()
                )
                metrics.event_lag.labels(*labels).set(lag)

    def _ended(self, now: float) -> bytes | None:
        """The last lines of a stream that must end now, or None while it may go on."""
        why = self.still_valid()
        if why is None and not self.gw.registry.may_subscribe(self.agency.id, self.ev.provider, self.ev.type):
            why = f"{self.agency.id} may no longer subscribe to {self.ev.name}"
        if why is not None:
            log.warning("event stream of %s on %s ended: %s", self.agency.id, self.ev.name, why)
            return sse_control("revoked", why)
        if now - self.opened >= self.gw.settings.max_stream_s:
            return sse_control(
                "reauthenticate", "the stream's lifetime is over: reconnect (with Last-Event-ID)"
            )
        return None

    async def commit(self) -> None:
        """Store the position (the subscriber's group) and record the deliveries since the last time."""
        if self.positions != self.committed:
            offsets = {
                TopicPartition(self.topic, p): OffsetAndMetadata(o, "") for p, o in self.positions.items()
            }
            try:
                await self.consumer.commit(offsets)
                self.committed = dict(self.positions)
            except KafkaError as exc:
                log.warning("event stream of %s: position not committed: %s", self.agency.id, exc)
        if self.delivered:
            n, self.delivered = self.delivered, 0
            rec = delivered_record(self.agency.id, self.ev.provider, self.ev.type, n, time.time() * 1000)
            await self.gw.recorder.write(rec, self.gw.recorder.within_s)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.commit()
        self.gw.metrics.event_lag.labels(self.agency.id, self.ev.provider, self.ev.type).set(0)
        await self.consumer.stop()
