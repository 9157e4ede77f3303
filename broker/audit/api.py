"""The audit part's internal API: checkpoints, keys, proofs and a subject's accesses, for the gateways.

Callers reach it only through a gateway, which authenticates them and passes who asks
(``X-NDXP-Agency``) and, for the tracker, the subject's keyed hash (never the identifier). It listens
on the internal address (``AUDIT_HOST``). Every answer is built from committed leaves and signed
checkpoints only: a proof that is not there yet is ``202`` with ``Retry-After``, never invented.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from broker.audit.index import Leaf, Reader
from broker.audit.merkle import leaf_hash
from broker.audit.pg import PgTracker
from broker.errors import InvalidRequest, NdxpError, NotFound, Unavailable
from broker.metrics import AuditMetrics, exposition

READER = web.AppKey("reader", Reader)
METRICS = web.AppKey("metrics", AuditMetrics)
VKEY = web.AppKey("vkey", str)
HEALTHY: web.AppKey[Callable[[], bool]] = web.AppKey("healthy")
SIGNED_AT: web.AppKey[Callable[[], float]] = web.AppKey("signed_at")
TRACKER: web.AppKey[PgTracker | None] = web.AppKey("tracker")
PENDING_S = 30.0
"""An exchange this recent that is not in the log yet may still be on its way: "pending", not 404."""
MAX_ACCESSES = 10_000
_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_EXCHANGE_ID = re.compile(r"\A[0-9A-Za-z-]{1,64}\Z")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def _problem(error: NdxpError) -> web.Response:
    """The platform's problem+json for ``error`` (the gateway relays what it means, not this body)."""
    headers = {"Retry-After": f"{error.retry_after:g}"} if error.retry_after is not None else None
    return web.Response(body=orjson.dumps(error.problem(None)), status=error.status, headers=headers,
                        content_type="application/problem+json")  # fmt: skip


def _pending(detail: str) -> web.Response:
    return _json({"status": "pending", "detail": detail}, status=202, headers={"Retry-After": "1"})


def _recent_uuid7(exchange_id: str) -> bool:
    try:
        u = uuid.UUID(exchange_id)
    except ValueError:
        return False
    if u.version != 7:
        return False
    return abs(time.time() - (u.int >> 80) / 1000) < PENDING_S


async def checkpoint(request: web.Request) -> web.Response:
    latest = request.app[READER].latest_checkpoint()
    request.app[METRICS].requests.labels("checkpoint", "200" if latest else "202").inc()
    if latest is None:
        return _pending("the log has no checkpoint yet")
    return web.Response(text=latest[1], content_type="text/plain")


async def key(request: web.Request) -> web.Response:
    return web.Response(text=request.app[VKEY] + "\n", content_type="text/plain")


async def exchange(request: web.Request) -> web.Response:
    """The leaf, index, inclusion proof and covering checkpoint of one exchange, for its caller or
    provider; 404 for anyone else exactly as for an unknown id (one lookup either way)."""
    reader, metrics = request.app[READER], request.app[METRICS]
    exchange_id = request.match_info["exchange_id"]
    agency = request.headers.get("X-NDXP-Agency", "")
    leaf = reader.by_exchange(exchange_id) if _EXCHANGE_ID.match(exchange_id) else None
    if leaf is None or agency not in (leaf.client, leaf.provider):
        if leaf is None and _recent_uuid7(exchange_id):
            metrics.requests.labels("exchange", "202").inc()
            return _pending("the exchange is not in the log yet")
        metrics.requests.labels("exchange", "404").inc()
        return _problem(NotFound("no such exchange in the log (or not yours)"))
    latest = reader.latest_checkpoint()
    if latest is None or latest[0] <= leaf.index:
        metrics.requests.labels("exchange", "202").inc()
        return _pending("no signed checkpoint covers this exchange yet")
    size, note = latest
    proof = reader.tree().inclusion(leaf.index, size)
    metrics.requests.labels("exchange", "200").inc()
    return _json({
        "exchange_id": exchange_id,
        "leaf_index": leaf.index,
        "leaf_hash": leaf_hash(leaf.leaf).hex(),
        "record": orjson.loads(leaf.leaf),
        "inclusion_proof": [h.hex() for h in proof],
        "tree_size": size,
        "checkpoint": note,
    })  # fmt: skip


def _size(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name, "")
    return int(raw) if raw.isdigit() and len(raw) <= 16 else None


async def consistency(request: web.Request) -> web.Response:
    reader, metrics = request.app[READER], request.app[METRICS]
    old, new = _size(request, "from"), _size(request, "to")
    tree = reader.tree()
    if old is None or new is None or not 0 <= old <= new:
        metrics.requests.labels("consistency", "400").inc()
        return _problem(InvalidRequest("from and to are tree sizes, from <= to"))
    if new > tree.size:
        metrics.requests.labels("consistency", "404").inc()
        return _problem(NotFound(f"the log holds {tree.size} leaves, not {new}"))
    metrics.requests.labels("consistency", "200").inc()
    return _json({"proof": [h.hex() for h in tree.consistency(old, new)]})


def _at(t_ms: Any) -> str | None:
    if not isinstance(t_ms, int | float):
        return None
    return (
        dt.datetime.fromtimestamp(t_ms / 1000, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def access_rows(reader: Reader, subject: str, limit: int = MAX_ACCESSES) -> list[dict[str, Any]]:
    """A subject's accesses, oldest first, from the SQLite index."""
    return rows_of(reader.accesses(subject, limit))


def rows_of(leaves: list[Leaf]) -> list[dict[str, Any]]:
    """Accesses as the API answers them, from the leaves that record them (SQLite's or PostgreSQL's)."""
    out = []
    for leaf in leaves:
        rec = orjson.loads(leaf.leaf)
        out.append({
            "at": _at(rec.get("t_in")),
            "client": rec.get("client"),
            "provider": rec.get("provider"),
            "service": rec.get("service"),
            "purpose": rec.get("purpose"),
            "user_id": rec.get("user_id"),
            "outcome": rec.get("outcome"),
            "exchange_id": rec.get("exchange_id"),
            "record_hash": leaf_hash(leaf.leaf).hex(),
            "leaf_index": leaf.index,
        })  # fmt: skip
    return out


async def accesses(request: web.Request) -> web.Response:
    """Every access to one subject (its keyed hash): when, who, which service, why, how it ended."""
    reader, metrics = request.app[READER], request.app[METRICS]
    subject = request.match_info["subject"]
    if not _HEX64.match(subject):
        metrics.requests.labels("tracker", "400").inc()
        return _problem(InvalidRequest("a subject key is 64 hex digits"))
    tracker = request.app[TRACKER]
    try:
        out = (
            rows_of(await tracker.accesses(subject, MAX_ACCESSES))
            if tracker
            else access_rows(reader, subject)
        )
    except Exception:  # PostgreSQL unreachable: the tracker cannot answer now
        metrics.requests.labels("tracker", "503").inc()
        return _problem(Unavailable("the data tracker's database is not reachable", retry_after=2))
    metrics.requests.labels("tracker", "200").inc()
    return _json({"accesses": out, "tree_size": reader.size()})


async def status(request: web.Request) -> web.Response:
    reader = request.app[READER]
    latest = reader.latest_checkpoint()
    signed = request.app[SIGNED_AT]()
    return _json({
        "tree_size": reader.size(),
        "checkpoint_size": latest[0] if latest else 0,
        "checkpoint_age_s": round(time.time() - signed, 1) if signed else None,
        "healthy": request.app[HEALTHY](),
    })  # fmt: skip


async def metrics_page(request: web.Request) -> web.Response:
    return exposition(request.app[METRICS].registry)


async def healthz(request: web.Request) -> web.Response:
    ok = request.app[HEALTHY]()
    return _json({"status": "ok" if ok else "failing"}, status=200 if ok else 503)


def make_app(
    reader: Reader,
    metrics: AuditMetrics,
    vkey: str,
    healthy: Callable[[], bool],
    signed_at: Callable[[], float],
    tracker: PgTracker | None = None,
) -> web.Application:
    app = web.Application()
    app[READER], app[METRICS], app[VKEY] = reader, metrics, vkey
    app[HEALTHY], app[SIGNED_AT], app[TRACKER] = healthy, signed_at, tracker
    app.router.add_get("/checkpoint", checkpoint)
    app.router.add_get("/key", key)
    app.router.add_get("/exchanges/{exchange_id}", exchange)
    app.router.add_get("/consistency", consistency)
    app.router.add_get("/subjects/{subject}/accesses", accesses)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    return app
