"""``/v1/audit/*`` and ``/v1/subjects/{id}/accesses`` (DESIGN §3.2): the exchange log's evidence.

The gateway authenticates the caller and passes the audit part (``AUDIT_URL``) who asks; the audit
part answers only an exchange's caller or provider. For the data tracker the gateway checks the
``tracker`` right and the identifier (it must be what some contract's ``x-ndxp-subject`` field
accepts), keys it with the platform secret, and records the query itself as an exchange (in the log).
The audit part down: 503, and exchanges go on.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from broker.audit.merkle import leaf_hash
from broker.errors import AccessDenied, InvalidRequest, NotFound, Unavailable
from broker.gateway.auth import authenticate
from broker.gateway.middleware import purpose, user_id
from broker.gateway.state import GATEWAY, Gateway
from broker.model.envelope import new_exchange_id
from broker.model.records import Mode, Outcome, TxRecord, subject_key

SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("audit session")
TRACKER = ("ndxp", "tracker")
"""The provider and service a tracker query is recorded as."""
_PASSED = ("Content-Type", "Retry-After")


def audit_url(gw: Gateway) -> str:
    s = gw.settings
    return (s.audit_url or f"http://{s.audit_host}:{s.audit_port}").rstrip("/")


async def _ask(request: web.Request, path: str, agency: str = "") -> tuple[int, bytes, dict[str, str]]:
    gw = request.app[GATEWAY]
    session = request.app[SESSION]
    try:
        async with session.get(
            audit_url(gw) + path, headers={"X-NDXP-Agency": agency}, timeout=aiohttp.ClientTimeout(total=5)
        ) as resp:
            body = await resp.read()
            return resp.status, body, {h: resp.headers[h] for h in _PASSED if h in resp.headers}
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unavailable("the exchange log is not reachable; retry shortly", retry_after=2) from exc


async def _relay(request: web.Request, path: str, agency: str = "") -> web.Response:
    status, body, headers = await _ask(request, path, agency)
    if status == 404:
        raise NotFound(orjson.loads(body).get("detail", "not found") if body else "not found")
    if status == 400:
        raise InvalidRequest(orjson.loads(body).get("detail", "bad request"))
    if status >= 500:
        raise Unavailable("the exchange log cannot answer now; retry shortly", retry_after=2)
    return web.Response(body=body, status=status, headers=headers)


async def checkpoint(request: web.Request) -> web.Response:
    """The latest signed checkpoint (public, as a transparency log's are)."""
    return await _relay(request, "/checkpoint")


async def key(request: web.Request) -> web.Response:
    return await _relay(request, "/key")


async def consistency(request: web.Request) -> web.Response:
    old, new = request.query.get("from", ""), request.query.get("to", "")
    if not (old.isdigit() and new.isdigit() and len(old) <= 16 and len(new) <= 16):
        raise InvalidRequest("from and to are tree sizes (non-negative integers)")
    return await _relay(request, f"/consistency?from={old}&to={new}")


async def exchange(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    agency = authenticate(gw, request)
    exchange_id = request.match_info["exchange_id"]
    if not exchange_id.replace("-", "").isalnum() or len(exchange_id) > 64:
        raise NotFound("no such exchange in the log (or not yours)")
    return await _relay(request, f"/exchanges/{exchange_id}", agency.id)


async def accesses(request: web.Request) -> web.Response:
    """Every access to one person's data, for an agency with the ``tracker`` right (itself recorded)."""
    gw = request.app[GATEWAY]
    agency = authenticate(gw, request)
    if "tracker" not in agency.roles:
        raise AccessDenied(f"{agency.id} has no tracker right")
    subject_id = request.match_info["subject_id"]
    schemas = gw.catalog.subject_schemas()
    if len(subject_id) > 128 or not any(not c.violations(subject_id) for c in schemas):
        raise InvalidRequest("the subject is not a valid identifier (see the contracts' x-ndxp-subject)")
    secret = gw.settings.subject_secret
    if not secret:
        raise Unavailable("the data tracker is not configured (NDXP_SUBJECT_SECRET)", retry_after=60)
    officer, why = user_id(request), purpose(request)
    t_in = time.time() * 1000
    hashed = subject_key(secret, subject_id)
    status, body, _ = await _ask(request, f"/subjects/{hashed}/accesses", agency.id)
    if status != 200:
        raise Unavailable("the data tracker cannot answer now; retry shortly", retry_after=2)
    found: dict[str, Any] = orjson.loads(body)
    names = {a.id: a.name for a in gw.registry}
    out = []
    for a in found["accesses"]:
        a["client_name"] = names.get(a["client"], a["client"])
        out.append(a)
    answer = orjson.dumps({"subject": subject_id, "accesses": out, "tree_size": found.get("tree_size")})
    rec = TxRecord(
        exchange_id=new_exchange_id(), client=agency.id, provider=TRACKER[0], service=TRACKER[1],
        outcome=Outcome.OK, status=200, t_in=t_in, t_out=time.time() * 1000, response_bytes=len(answer),
        gateway=gw.replies.topic, user_id=officer, purpose=why, mode=Mode.SYNC,
        request_sha256=hashlib.sha256(b"").hexdigest(), response_sha256=hashlib.sha256(answer).hexdigest(),
        subject=hashed,
    )  # fmt: skip
    raw = rec.encode()
    if not await gw.recorder.write(rec, gw.recorder.within_s, raw=raw):
        raise Unavailable("the query could not be recorded; retry shortly", retry_after=1)
    return web.Response(
        body=answer,
        content_type="application/json",
        headers={"X-NDXP-Exchange-Id": rec.exchange_id, "X-NDXP-Record-Hash": leaf_hash(raw).hex()},
    )


def add_routes(app: web.Application) -> None:
    async def session(app: web.Application) -> Any:
        app[SESSION] = aiohttp.ClientSession()
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session)
    app.router.add_get("/v1/audit/checkpoint", checkpoint)
    app.router.add_get("/v1/audit/key", key)
    app.router.add_get("/v1/audit/consistency", consistency)
    app.router.add_get("/v1/audit/exchanges/{exchange_id}", exchange)
    app.router.add_get("/v1/subjects/{subject_id}/accesses", accesses)
