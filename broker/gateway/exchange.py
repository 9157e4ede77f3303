"""POST /v1/exchange/{provider}/{service}: the hot path.

authenticate → authorize → admit (rate, in-flight) → read body (size limit)
→ validate request → produce to ``ndxp.req.<provider>.<service>`` → await the
reply on this worker's reply topic within the service timeout → validate the
response → write the transaction record and await Kafka's acknowledgement →
answer. The request bytes go to Kafka as they came. Whatever the outcome, the
exchange is counted in metrics and in a transaction record; an exchange that
reached its provider is answered only once its record is in Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from broker.contracts.catalog import Contract, Service
from broker.contracts.registry import Agency
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
from broker.gateway.middleware import header, problem_response, request_id
from broker.gateway.recorder import RECORD_WITHIN_S
from broker.gateway.state import EXCHANGE_ID, GATEWAY, Gateway
from broker.gateway.stored import RECORDED_BY_KEEPER, idempotency_key, preferences, stored_exchange
from broker.model.documents import Mode
from broker.model.envelope import Reply, RequestMeta, now_ms
from broker.model.records import TxRecord

log = logging.getLogger(__name__)
JSON = "application/json"
PROBLEM = "application/problem+json"


async def exchange(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    started = time.perf_counter()
    rec = TxRecord(
        exchange_id=request[EXCHANGE_ID],
        client="-",
        provider="-",
        service="-",
        outcome="internal_error",
        status=500,
        t_in=time.time() * 1000,
        gateway=gw.replies.topic,
    )
    try:
        rec.request_id = request_id(request)
        rec.user_id = header(request, "X-NDXP-User-Id")
        rec.purpose = header(request, "X-NDXP-Purpose")
        resp = await _exchange(gw, request, rec)
    except NdxpError as exc:
        rec.outcome = exc.code
        resp = problem_response(exc, rec.exchange_id)
    except Exception:
        log.exception("exchange %s failed unexpectedly", rec.exchange_id)
        resp = problem_response(NdxpError("unexpected error; see the gateway log"), rec.exchange_id)
    rec.status = resp.status
    rec.response_bytes = len(resp.body) if isinstance(resp.body, bytes) else 0
    rec.t_out = time.time() * 1000
    if resp.get(RECORDED_BY_KEEPER):
        pass  # a stored exchange: the keeper writes its record once it ends (or a replay: no new exchange)
    elif rec.client == "-":
        # Unauthenticated: tallied, one record a second (a failed-login flood costs no Kafka write each).
        gw.recorder.tally(rec)
    # With Kafka unreachable, a record is not even tried: counted lost at once, not after a wait.
    elif not await gw.recorder.write(rec, RECORD_WITHIN_S if gw.kafka.ok else 0.0) and rec.t_sent is not None:
        # The provider was asked, but the exchange cannot be counted: not answered either.
        rec.outcome = "unavailable"
        resp = problem_response(
            Unavailable("the exchange could not be recorded; retry shortly", retry_after=1),
            rec.exchange_id,
        )
    gw.metrics.exchanges.labels(rec.client, rec.provider, rec.service, rec.outcome).inc()
    gw.metrics.duration.labels(rec.provider, rec.service).observe(time.perf_counter() - started)
    return resp


async def _exchange(gw: Gateway, request: web.Request, rec: TxRecord) -> web.Response:
    provider = request.match_info["provider"]
    service = request.match_info["service"]
    agency = authenticate(gw, request)
    rec.client = agency.id
    svc = gw.catalog.get(provider, service)
    if svc is None:
        raise UnknownService(f"no service {provider}/{service}; see GET /v1/services")
    rec.provider, rec.service = provider, service
    if not gw.registry.allowed(agency.id, provider, service):
        raise AccessDenied(f"{agency.id} may not call {provider}/{service}")
    mode: Mode = "async" if "respond-async" in preferences(request) else "sync"
    rec.mode = mode
    key = idempotency_key(request)
    limit = gw.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body limit is {limit} bytes")
    # The body is read before an in-flight slot is taken, within a time limit:
    # slow uploads cannot hold the slots that other callers need.
    body = await read_body(request, limit, gw.settings.body_timeout_s)
    rec.request_bytes = len(body)
    _validate_request(svc, body)
    if not gw.kafka.ok:  # fail fast: waiting for the timeout would help nobody
        raise Unavailable("Kafka is unreachable; retry shortly", retry_after=1)
    if mode == "async" or key is not None:
        return await stored_exchange(gw, request, svc, agency, body, rec, mode=mode, key=key)
    with gw.limits.admit(agency):
        reply = await _round_trip(gw, request, svc, agency, body, rec)
    verdict = judge(svc, reply)
    rec.outcome = verdict.outcome
    return web.Response(
        body=verdict.body, status=verdict.status, content_type=PROBLEM if verdict.problem else JSON
    )


async def _round_trip(
    gw: Gateway, request: web.Request, svc: Service, agency: Agency, body: bytes, rec: TxRecord
) -> Reply:
    """Produce the request and await its reply within the service timeout."""
    eid = rec.exchange_id
    meta = RequestMeta(
        exchange_id=eid,
        client=agency.id,
        provider=svc.provider,
        service=svc.service,
        reply_to=gw.replies.topic,
        deadline_ms=now_ms() + svc.timeout_ms,
        request_id=rec.request_id,
        user_id=rec.user_id,
        purpose=rec.purpose,
        traceparent=header(request, "traceparent"),
    )
    reply_future = gw.replies.expect(eid)
    gw.metrics.in_flight.inc()
    sent = time.perf_counter()
    try:
        # Handing the request to Kafka has its own, shorter bound (Kafka not
        # acknowledging is "unavailable", not a slow provider); then the reply
        # is awaited until the deadline the provider was given.
        await gw.hand_off(
            gw.settings.names.request(svc.provider, svc.service), body,
            what="the request", headers=meta.headers(), at_most_s=svc.timeout_ms / 1000,
        )  # fmt: skip
        rec.t_sent = time.time() * 1000
        try:
            async with asyncio.timeout(max(0, meta.deadline_ms - now_ms()) / 1000):
                reply = await reply_future
        except TimeoutError as exc:
            raise Timeout(f"{svc.key} did not answer within {svc.timeout_ms} ms") from exc
        rec.t_reply = time.time() * 1000
    finally:
        gw.replies.forget(eid)
        gw.metrics.in_flight.dec()
    gw.metrics.kafka_roundtrip.labels(svc.provider, svc.service).observe(time.perf_counter() - sent)
    return reply


async def read_body(request: web.Request, limit: int, within_s: float) -> bytes:
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


def _validate_request(svc: Service, body: bytes) -> None:
    validated(svc.request, body)


def validated(contract: Contract, body: bytes) -> Any:
    """The body parsed and checked against ``contract``; InvalidRequest (400, with paths) if it is not."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"the body is not valid JSON: {exc}",
            extra={"errors": [{"path": "/", "schema_path": "/", "message": "invalid JSON"}]},
        ) from exc
    bad = contract.violations(doc)
    if bad:
        raise InvalidRequest(
            "; ".join(f"{v.path}: {v.message}" for v in bad[:3]),
            extra={"errors": [v.as_dict() for v in bad]},
        )
    return doc
