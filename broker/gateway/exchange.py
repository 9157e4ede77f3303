"""POST /v1/exchange/{provider}/{service}: the exchange pipeline, the hot path.

One :class:`~broker.gateway.context.Exchange` carries the exchange through
the steps, top to bottom:

1. **identify**: the caller from its credential, the service from the path,
   the caller's right to it (``_identify``);
2. **read**: the body within its size and time limits, checked against the
   request schema (``_read``);
3. **exchange**: a sync call is admitted (rate, in-flight), produced to
   ``<prefix>.req.<provider>.lookups`` (``.writes`` for a write) and its reply awaited on this
   worker's reply topic until the deadline (``_round_trip``); the reply is
   judged against the response schema (``broker.contracts.verdicts``). An
   async or idempotent call takes the stored path (``broker.gateway.stored``);
4. **record**: whoever the exchange's ``recorded_by`` names writes its
   transaction record: this worker (the answer waits for Kafka's
   acknowledgement, so that no answered exchange goes uncounted), its tally
   (unauthenticated rejections), the keeper (stored exchanges) or nobody (a
   replay). An exchange that reached its provider but cannot be recorded is
   answered 503, not with its result.

The request bytes go to Kafka as they came; whatever the outcome, the
exchange is counted in the metrics.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import logging
import re
import time
from typing import Any

import orjson
from aiohttp import web

from broker.audit.merkle import leaf_hash
from broker.contracts.catalog import Contract, Effects, Service, VersionState, subject_of
from broker.contracts.verdicts import judge
from broker.errors import (
    AccessDenied,
    ClientClosed,
    InvalidRequest,
    NdxpError,
    PayloadTooLarge,
    RequestTimeout,
    Timeout,
    Unavailable,
    UnknownService,
)
from broker.gateway.auth import authenticate
from broker.gateway.context import Exchange, RecordedBy
from broker.gateway.middleware import (
    JSON,
    PROBLEM,
    header,
    idempotency_key,
    preferences,
    problem_response,
    purpose,
    request_id,
    user_id,
)
from broker.gateway.state import EXCHANGE_ID, GATEWAY, Gateway
from broker.gateway.stored import stored_exchange
from broker.kafka.topics import WRITE_REPLY_PARTITION
from broker.model.envelope import Reply, now_ms
from broker.model.records import Mode, Outcome, subject_key

log = logging.getLogger(__name__)


async def exchange(request: web.Request) -> web.StreamResponse:
    """The handler: run the pipeline, record the exchange, answer."""
    gw = request.app[GATEWAY]
    ex = Exchange(id=request[EXCHANGE_ID], gateway=gw.replies.topic)
    try:
        ex.request_id = request_id(request)
        ex.user_id = user_id(request)
        ex.purpose = purpose(request)
        ex.traceparent = header(request, "traceparent")
        resp = await _pipeline(gw, request, ex)
    except NdxpError as exc:
        ex.outcome = exc.code
        resp = problem_response(exc, ex.id)
    except Exception:
        log.exception("exchange %s failed unexpectedly", ex.id)
        resp = problem_response(NdxpError("unexpected error; see the gateway log"), ex.id)
    resp = await _record(gw, ex, resp)
    if ex.svc is not None:
        version_headers(ex.svc, resp)
    gw.metrics.exchanges.labels(ex.client, ex.provider, ex.service, ex.outcome).inc()
    gw.metrics.duration.labels(ex.provider, ex.service).observe(time.perf_counter() - ex.started)
    return resp


def version_headers(svc: Service, resp: web.StreamResponse) -> None:
    """Which version answered; for a deprecated one, ``Deprecation`` (RFC 9745) and ``Sunset`` (RFC 8594)."""
    resp.headers["X-NDXP-Service-Version"] = svc.version
    if svc.state is VersionState.DEPRECATED:
        resp.headers["Deprecation"] = "true"
        if svc.sunset is not None:
            sunset = dt.datetime.combine(svc.sunset, dt.time(), dt.UTC)
            resp.headers["Sunset"] = email.utils.format_datetime(sunset, usegmt=True)


async def _pipeline(gw: Gateway, request: web.Request, ex: Exchange) -> web.Response:
    _identify(gw, request, ex)
    key = idempotency_key(request)
    ex.mode = Mode.ASYNC if "respond-async" in preferences(request) else Mode.SYNC
    await _read(gw, request, ex)
    if not gw.kafka.ok:  # fail fast: waiting for the timeout would help nobody
        raise Unavailable("Kafka is unreachable; retry shortly", retry_after=1)
    if ex.mode is Mode.ASYNC or key is not None:
        return await stored_exchange(gw, ex, key)
    assert ex.agency is not None
    assert ex.svc is not None
    with gw.limits.admit(ex.agency):
        reply = await _round_trip(gw, ex)
    verdict = judge(ex.svc, reply)
    ex.outcome = verdict.outcome
    return web.Response(
        body=verdict.body, status=verdict.status, content_type=PROBLEM if verdict.problem else JSON
    )


def _identify(gw: Gateway, request: web.Request, ex: Exchange) -> None:
    """Who calls (401 otherwise), which service (404), and whether the caller may call it (403)."""
    provider = request.match_info["provider"]
    service = request.match_info["service"]
    pinned = request.match_info.get("major")
    ex.agency = authenticate(gw, request)
    ex.svc = gw.catalog.get(provider, service, int(pinned) if pinned else None)
    if ex.svc is None:
        which = f"{provider}/{service}" + (f" version {pinned}" if pinned else "")
        raise UnknownService(f"no service {which} is served; see GET /v1/services")
    if not gw.registry.allowed(ex.agency.id, provider, service, ex.svc.major):
        raise AccessDenied(f"{ex.agency.id} may not call {provider}/{service} (version {ex.svc.major})")


async def _read(gw: Gateway, request: web.Request, ex: Exchange) -> None:
    """The body, read before an in-flight slot is taken and within a time limit (slow uploads cannot
    hold the slots other callers need), then checked against the request schema."""
    assert ex.svc is not None
    limit = gw.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body limit is {limit} bytes")
    ex.body = await read_body(request, limit, gw.settings.body_timeout_s)
    doc = validated(ex.svc.request, ex.body)
    if ex.svc.subject and gw.settings.subject_secret:
        value = subject_of(ex.svc, doc)
        if value is not None:
            ex.subject = subject_key(gw.settings.subject_secret, value)


async def _round_trip(gw: Gateway, ex: Exchange) -> Reply:
    """Produce the request and await its reply within the service timeout."""
    svc = ex.svc
    assert svc is not None
    write = svc.effects is Effects.WRITE
    # A write's reply comes in its adapter's transaction: on a partition of its own (lookups' replies
    # would otherwise wait behind the transaction).
    meta = ex.meta(
        reply_to=gw.replies.topic, deadline_ms=now_ms() + svc.timeout_ms,
        reply_partition=WRITE_REPLY_PARTITION if write else None,
    )  # fmt: skip
    provider = gw.registry.agencies.get(svc.provider)
    reply_future = gw.replies.expect(ex.id, svc.provider, provider.reply_secret if provider else None)
    gw.metrics.in_flight.inc()
    sent = time.perf_counter()
    try:
        # Handing the request to Kafka has its own, shorter bound (Kafka not
        # acknowledging is "unavailable", not a slow provider); then the reply
        # is awaited until the deadline the provider was given.
        await gw.hand_off(
            gw.settings.names.requests(svc.provider, write=write), ex.body,
            what="the request", headers=meta.headers(), at_most_s=svc.timeout_ms / 1000,
            # A lookup's copy that arrives late is past its deadline or answered from the adapter's
            # memory; a write is never sent twice.
            hedge=not write,
        )  # fmt: skip
        ex.sent()
        try:
            async with asyncio.timeout(max(0, meta.deadline_ms - now_ms()) / 1000):
                reply = await reply_future
        except TimeoutError as exc:
            raise Timeout(f"{svc.key} did not answer within {svc.timeout_ms} ms") from exc
        ex.replied()
    finally:
        gw.replies.forget(ex.id)
        gw.metrics.in_flight.dec()
    gw.metrics.kafka_roundtrip.labels(svc.provider, svc.service).observe(time.perf_counter() - sent)
    return reply


async def _record(gw: Gateway, ex: Exchange, resp: web.Response) -> web.Response:
    """Write the exchange's record as its ``recorded_by`` says; the answer to send."""
    if ex.agency is None:  # unauthenticated: tallied (a failed-login flood costs no Kafka write each)
        ex.recorded_by = RecordedBy.TALLY
    if ex.recorded_by in (RecordedBy.KEEPER, RecordedBy.NOBODY):
        return resp
    record = ex.record(status=resp.status, response=resp.body if isinstance(resp.body, bytes) else b"")
    if ex.recorded_by is RecordedBy.TALLY:
        gw.recorder.tally(record)
        return resp
    raw = record.encode()
    # The receipt: the record's leaf hash in the exchange log (DESIGN §3.2), its proof's start.
    resp.headers["X-NDXP-Record-Hash"] = leaf_hash(raw).hex()
    # With Kafka unreachable, a record is not even tried: counted lost at once, not after a wait.
    if await gw.recorder.write(record, _record_within(gw, ex), raw=raw) or ex.t_sent is None:
        return resp
    # The provider was asked, but the exchange cannot be counted: not answered either.
    ex.outcome = Outcome.UNAVAILABLE
    return problem_response(
        Unavailable("the exchange could not be recorded; retry shortly", retry_after=1), ex.id
    )


def _record_within(gw: Gateway, ex: Exchange) -> float:
    """How long the exchange's record may wait for Kafka: the usual wait, or what is left of the
    service's deadline if more (the provider has acted; a 503 would have the caller do it again)."""
    if not gw.kafka.ok:
        return 0.0
    left_s = (ex.t_in + ex.svc.timeout_ms - now_ms()) / 1000 if ex.svc is not None else 0.0
    return max(gw.recorder.within_s, left_s)


async def read_body(request: web.Request, limit: int, within_s: float) -> bytes:
    """The request body, at most ``limit`` bytes and within ``within_s`` (413, 408, 499 otherwise)."""
    try:
        if request.content.is_eof():  # the whole body came with the headers: no timer needed
            body = await request.read()
        else:
            async with asyncio.timeout(within_s):
                body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"the body limit is {limit} bytes") from exc
    except TimeoutError as exc:
        raise RequestTimeout(f"the request body was not received within {within_s:g} s") from exc
    except ConnectionError as exc:
        raise ClientClosed("the caller closed the connection while sending the body") from exc
    if len(body) > limit:
        raise PayloadTooLarge(f"the body limit is {limit} bytes")
    return body


def validated(contract: Contract, body: bytes) -> Any:
    """The body parsed and checked against ``contract``; InvalidRequest (400, with paths) if it is not.

    A key given twice in one object is refused: the contract would check one value (the parser keeps
    the last) while the provider, which gets the bytes unchanged, might read the other.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"the body is not valid JSON: {exc}",
            extra={"errors": [{"path": "/", "schema_path": "/", "message": "invalid JSON"}]},
        ) from exc
    _no_duplicate_keys(body, doc)
    bad = contract.violations(doc)
    if bad:
        raise InvalidRequest(
            "; ".join(f"{v.path}: {v.message}" for v in bad[:3]),
            extra={"errors": [v.as_dict() for v in bad]},
        )
    return doc


_KEY_END = re.compile(rb'"\s*:')
"""The end of every object key in JSON text (and of strings that happen to hold ``":``)."""


def _keys(doc: Any) -> int:
    n, todo = 0, [doc]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            n += len(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return n


def _no_duplicate_keys(body: bytes, doc: Any) -> None:
    """InvalidRequest if an object of ``body`` has a key twice.

    Fast path: the text has at least one key end per key it holds; with no duplicate and no string
    holding ``":``, exactly as many as the parsed document. Only when the counts differ is the text
    parsed again, keeping every pair, to find the key.
    """
    if len(_KEY_END.findall(body)) == _keys(doc):
        return

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise InvalidRequest(
                    f"the key {key[:64]!r} appears twice in one object",
                    extra={
                        "errors": [
                            {"path": "/", "schema_path": "/", "message": f"duplicate key {key[:64]!r}"}
                        ]
                    },
                )
            seen[key] = value
        return seen

    json.loads(body, object_pairs_hook=pairs)
