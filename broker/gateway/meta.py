"""Metaservices: agencies, services, allowed, openapi.json, health, metrics."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import orjson
from aiohttp import web

from broker import __version__
from broker.contracts.catalog import Catalog
from broker.counter.stats import summarise
from broker.errors import InvalidRequest, NotFound, Unavailable, UnknownService
from broker.gateway.auth import authenticate
from broker.gateway.state import GATEWAY
from broker.metrics import exposition
from broker.model.records import day_of

_DAY = re.compile(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def agencies(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return json_response({"agencies": [a.describe() for a in gw.registry]})


async def services(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return json_response({"services": [s.describe() for s in gw.catalog]})


async def service(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    p, s = request.match_info["provider"], request.match_info["service"]
    svc = gw.catalog.get(p, s)
    if svc is None:
        raise UnknownService(f"no service {p}/{s}; see GET /v1/services")
    return json_response(svc.describe())


async def allowed(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    agency = authenticate(gw, request)
    publish, subscribe = gw.registry.allowed_events(agency.id)
    return json_response(
        {
            "client": agency.id,
            "services": gw.registry.allowed_services(agency.id),
            "events": {"publish": publish, "subscribe": subscribe},
        }
    )


async def stats(request: web.Request) -> web.Response:
    """Exact counts of one day (default: today in the counting time zone)."""
    gw = request.app[GATEWAY]
    if "stats" not in gw.settings.expose:
        raise NotFound("/v1/stats is not exposed here (NDXP_EXPOSE)")
    day = request.query.get("day") or day_of(time.time() * 1000, gw.settings.stats_utc_offset_hours)
    try:
        if not _DAY.match(day):
            raise ValueError(day)
        dt.date.fromisoformat(day)
    except ValueError as exc:
        raise InvalidRequest(f"day must be YYYY-MM-DD, not {day!r}") from exc
    return json_response(summarise(gw.stats.counts, day))


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(request.app[GATEWAY].catalog))


async def healthz(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    if not gw.replies.ready:
        raise Unavailable("reply consumer not assigned yet", retry_after=1)
    if not gw.exchanges.healthy:
        raise Unavailable("exchange view not caught up yet", retry_after=1)
    if not gw.kafka.ok:
        raise Unavailable(f"Kafka unreachable: {gw.kafka.last_error}", retry_after=1)
    return json_response({"status": "ready", "reply_topic": gw.replies.topic, "worker": gw.worker})


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    if "metrics" not in gw.settings.expose:
        raise NotFound("/metrics is not exposed here (NDXP_EXPOSE)")
    return exposition(gw.metrics.registry, gw.settings.metrics_dir)


_PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["code", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "detail": {"type": "string"},
        "exchange_id": {"type": ["string", "null"]},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def openapi_document(catalog: Catalog) -> dict[str, Any]:
    """OpenAPI 3.1, one operation per service with its own schemas."""
    problem = {
        "description": "Error (problem+json)",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    paths: dict[str, Any] = {}
    for svc in catalog:
        examples = {f"example{i}": {"value": ex} for i, ex in enumerate(svc.examples)}
        paths[f"/v1/exchange/{svc.provider}/{svc.service}"] = {
            "post": {
                "operationId": f"{svc.provider}__{svc.service}".replace("-", "_"),
                "summary": svc.title,
                "description": svc.description,
                "tags": [svc.provider],
                "security": [{"apiKey": []}],
                "parameters": [
                    {"name": "X-Request-Id", "in": "header", "schema": {"type": "string"}},
                    {"name": "X-NDXP-User-Id", "in": "header", "schema": {"type": "string"}},
                    {"name": "X-NDXP-Purpose", "in": "header", "schema": {"type": "string"}},
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "description": "1-255 visible ASCII; the same key and body within 24 h "
                        "replays the first answer",
                        "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
                    },
                    {
                        "name": "Prefer",
                        "in": "header",
                        "description": "respond-async: 202 + Location /v1/exchanges/{exchange_id}",
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": svc.request.schema, "examples": examples}},
                },
                "responses": {
                    "200": {
                        "description": "The provider's typed answer",
                        "content": {"application/json": {"schema": svc.response.schema}},
                    },
                    "202": {"description": "Accepted (Prefer: respond-async); see the Location header"},
                    "default": problem,
                },
                "x-ndxp-timeout-ms": svc.timeout_ms,
                "x-ndxp-async-ttl-s": svc.async_ttl_s,
                "x-ndxp-version": svc.version,
            }
        }
    for ev in catalog.events.values():
        paths[f"/v1/events/{ev.provider}/{ev.type}"] = {
            "post": {
                "operationId": f"publish__{ev.provider}__{ev.type}".replace("-", "_"),
                "summary": f"Publish: {ev.title}",
                "description": ev.description,
                "tags": ["events", ev.provider],
                "security": [{"apiKey": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ev.schema.schema}},
                },
                "responses": {"202": {"description": "Durable in Kafka: {event_id}"}, "default": problem},
            },
            "get": {
                "operationId": f"subscribe__{ev.provider}__{ev.type}".replace("-", "_"),
                "summary": f"Subscribe (Server-Sent Events): {ev.title}",
                "tags": ["events", ev.provider],
                "security": [{"apiKey": []}],
                "parameters": [
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                ],
                "responses": {
                    "200": {"description": "A stream of events", "content": {"text/event-stream": {}}},
                    "default": problem,
                },
                "x-ndxp-key": ev.key,
            },
        }
    for path, summary in (
        ("/v1/events", "Event types: schema, key and examples"),
        ("/v1/agencies", "Registered agencies"),
        ("/v1/services", "Service catalog"),
        ("/v1/allowed", "Services the caller may call"),
        ("/v1/stats", "Exact transaction counts of a day (?day=YYYY-MM-DD)"),
        ("/v1/exchanges/{exchange_id}", "A stored exchange's status and result (owner only; Prefer: wait=N)"),
        ("/healthz", "Liveness"),
        ("/readyz", "Readiness"),
    ):
        paths[path] = {"get": {"summary": summary, "responses": {"200": {"description": "OK"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "NDXP data exchange gateway", "version": __version__},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": {"Problem": _PROBLEM_SCHEMA},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
