"""POST /v1/exchange/{provider}/{service}: the hot path.

authenticate → authorize → admit (rate, in-flight) → read body (size limit)
→ validate request → produce to ``ndxp.req.<provider>.<service>`` → await the
reply on this worker's reply topic within the service timeout → validate the
response → answer. The request bytes go to Kafka as they came.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from broker.envelope import ReplyOutcome, RequestMeta, now_ms, request_topic
from broker.errors import (
    AccessDenied,
    InvalidRequest,
    InvalidResponse,
    NdxpError,
    PayloadTooLarge,
    ProviderError,
    Timeout,
    Unauthorized,
    UnknownService,
)
from broker.gateway.state import EXCHANGE_ID, GATEWAY, Gateway
from broker.registry import Agency

JSON = "application/json"
PROBLEM = "application/problem+json"


def authenticate(gw: Gateway, request: web.Request) -> Agency:
    """The calling agency, from ``Authorization: Bearer <api key>`` only."""
    auth = request.headers.get("Authorization", "")
    scheme, _, key = auth.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("send your API key as 'Authorization: Bearer <api key>'")
    agency = gw.registry.authenticate(key.strip())
    if agency is None:
        raise Unauthorized("unknown API key")
    return agency


async def exchange(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    started = time.perf_counter()
    exchange_id = request[EXCHANGE_ID]
    provider = request.match_info["provider"]
    service = request.match_info["service"]
    client = "-"
    labels = ("-", "-")
    outcome = "internal_error"
    try:
        agency = authenticate(gw, request)
        client = agency.id
        svc = gw.catalog.get(provider, service)
        if svc is None:
            raise UnknownService(f"no service {provider}/{service}; see GET /v1/services")
        labels = (provider, service)
        if not gw.registry.allowed(agency.id, provider, service):
            raise AccessDenied(f"{agency.id} may not call {provider}/{service}")
        if request.content_length is not None and request.content_length > gw.settings.max_body_bytes:
            raise PayloadTooLarge(f"the body limit is {gw.settings.max_body_bytes} bytes")
        with gw.limits.admit(agency):
            body = await _read_body(request, gw.settings.max_body_bytes)
            _validate_request(svc.request.violations, body)
            meta = RequestMeta(
                exchange_id=exchange_id,
                client=agency.id,
                provider=provider,
                service=service,
                reply_to=gw.replies.topic,
                deadline_ms=now_ms() + svc.timeout_ms,
                user_id=request.headers.get("X-NDXP-User-Id"),
                purpose=request.headers.get("X-NDXP-Purpose"),
                traceparent=request.headers.get("traceparent"),
            )
            if gw.replies.waiting(exchange_id):
                raise InvalidRequest(f"X-Request-Id {exchange_id!r} is already in flight")
            reply_future = gw.replies.expect(exchange_id)
            gw.metrics.in_flight.inc()
            sent = time.perf_counter()
            try:
                async with asyncio.timeout(svc.timeout_ms / 1000):
                    delivery = await gw.producer.send(
                        request_topic(provider, service),
                        body,
                        key=exchange_id.encode(),
                        headers=meta.headers(),
                    )
                    await delivery
                    reply = await reply_future
            except TimeoutError as exc:
                raise Timeout(f"{provider}/{service} did not answer within {svc.timeout_ms} ms") from exc
            finally:
                gw.replies.forget(exchange_id)
                gw.metrics.in_flight.dec()
            gw.metrics.kafka_roundtrip.labels(*labels).observe(time.perf_counter() - sent)

        if reply.outcome is ReplyOutcome.PROVIDER_ERROR:
            raise ProviderError(_detail(reply.body) or f"{provider} failed to answer")
        if reply.outcome is ReplyOutcome.BUSINESS_ERROR:
            outcome = "business_error"
            return web.Response(body=reply.body, status=reply.status, content_type=PROBLEM)
        try:
            answer = orjson.loads(reply.body)
        except orjson.JSONDecodeError as exc:
            raise InvalidResponse(f"{provider}/{service} answered with invalid JSON") from exc
        bad = svc.response.violations(answer)
        if bad:
            raise InvalidResponse(
                f"{provider}/{service} answered outside its contract",
                extra={"errors": [v.as_dict() for v in bad]},
            )
        outcome = "ok"
        return web.Response(body=reply.body, status=200, content_type=JSON)
    except NdxpError as exc:
        outcome = exc.code
        raise
    finally:
        gw.metrics.exchanges.labels(client, *labels, outcome).inc()
        gw.metrics.duration.labels(*labels).observe(time.perf_counter() - started)


async def _read_body(request: web.Request, limit: int) -> bytes:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"the body limit is {limit} bytes") from exc
    if len(body) > limit:
        raise PayloadTooLarge(f"the body limit is {limit} bytes")
    return body


def _validate_request(violations: Any, body: bytes) -> None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"the body is not valid JSON: {exc}",
            extra={"errors": [{"path": "/", "schema_path": "/", "message": "invalid JSON"}]},
        ) from exc
    bad = violations(doc)
    if bad:
        raise InvalidRequest(
            "; ".join(f"{v.path}: {v.message}" for v in bad[:3]),
            extra={"errors": [v.as_dict() for v in bad]},
        )


def _detail(body: bytes) -> str | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return str(doc.get("detail")) if isinstance(doc, dict) and doc.get("detail") else None
