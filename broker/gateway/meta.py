"""Metaservices: agencies, services, allowed, stats, openapi.json, health, metrics."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import orjson
from aiohttp import web

from broker.contracts.registry import Agency
from broker.counter.stats import summarise
from broker.errors import InvalidRequest, OperatorOnly, Unavailable, UnknownService
from broker.gateway.auth import authenticate
from broker.gateway.openapi import openapi_document
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
    # Every version with its state (the default one of each service first, as before versions).
    default = {id(s) for s in gw.catalog}
    listed = sorted(
        gw.catalog.versions(), key=lambda s: (s.provider, s.service, id(s) not in default, s.major)
    )
    return json_response({"services": [{**s.describe(), "default": id(s) in default} for s in listed]})


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


def _reader(request: web.Request, page: str) -> Agency | None:
    """Who reads ``page`` (stats or metrics): None when the operator made it public (NDXP_EXPOSE),
    otherwise the authenticated caller (401 without a credential)."""
    gw = request.app[GATEWAY]
    if page in gw.settings.expose:
        return None
    return authenticate(gw, request)


async def stats(request: web.Request) -> web.Response:
    """Exact counts of one day (default: today in the counting time zone): an agency sees the rows
    it is the client or the provider of, an operator (or anyone, where NDXP_EXPOSE has stats) all."""
    gw = request.app[GATEWAY]
    reader = _reader(request, "stats")
    day = request.query.get("day") or day_of(time.time() * 1000, gw.settings.stats_utc_offset_hours)
    try:
        if not _DAY.match(day):
            raise ValueError(day)
        dt.date.fromisoformat(day)
    except ValueError as exc:
        raise InvalidRequest(f"day must be YYYY-MM-DD, not {day!r}") from exc
    counts = gw.stats.counts
    if reader is not None and not reader.operator:
        me = reader.id
        counts = {k: n for k, n in counts.items() if k.day == day and me in (k.client, k.provider)}
    return json_response(summarise(counts, day))


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
    if not gw.kafka.ok:  # the cause (broker hosts, ports) is in the log, not in the answer
        raise Unavailable("Kafka unreachable", retry_after=1)
    # Ready or not, nothing more: the reply topic and worker would name the host to anyone.
    return json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    reader = _reader(request, "metrics")
    if reader is not None and not reader.operator:
        # Who calls which service how often, and who is subscribed now: for the operator only.
        raise OperatorOnly(f"{reader.id} is not an operator: /metrics takes an operator's credential here")
    return exposition(gw.metrics.registry, gw.settings.metrics_dir)
