"""Stored exchanges at the gateway: ``Prefer: respond-async``, ``Idempotency-Key``, ``GET /v1/exchanges``.

A stored exchange is written to the exchanges topic (its pending document)
before its request goes to the provider; the provider's reply goes to the
same topic (not to this worker), and the keeper (``ndxp keeper``) finishes
it: checks the reply against the contract, writes the final document and
the transaction record in one Kafka transaction. So any worker of any
gateway instance can answer for it, and it survives a gateway restart.

- Async: once the pending document and the request are acknowledged by
  Kafka, ``202 Accepted`` with ``Location: /v1/exchanges/{id}``.
- Idempotent (``Idempotency-Key``, sync or async): the pending document is
  also the claim on the key, in the partition the key hashes to; the first
  claim in the log wins (see ``broker.model.documents``). The winner's request
  goes to the provider; every other call with that key gets its status and
  body again (``Idempotent-Replayed: true``), waits for it while it is in
  flight (a sync call, bounded by the service timeout), or gets 409.
"""

from __future__ import annotations

import hashlib
import re
import time

import orjson
from aiohttp import web

from broker.contracts.catalog import Effects
from broker.errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    NotFound,
    RateLimited,
    Timeout,
    Unavailable,
)
from broker.gateway.auth import authenticate
from broker.gateway.context import Exchange, RecordedBy
from broker.gateway.middleware import JSON, PROBLEM, preferences, problem_response, wait_seconds
from broker.gateway.state import GATEWAY, Gateway
from broker.model.documents import (
    GRACE_MS,
    H_DOC,
    Claim,
    Doc,
    Final,
    Pending,
    Status,
    fingerprint,
    idempotency_hash,
    partition_for,
)
from broker.model.envelope import EXCHANGE_ID_PATTERN
from broker.model.records import Mode, Outcome

KEEPER_MARGIN_S = 3.0
"""How long past an exchange's expiry a sync caller waits for the keeper's final document."""
_EXCHANGE_ID = re.compile(EXCHANGE_ID_PATTERN)


async def stored_exchange(gw: Gateway, ex: Exchange, key: str | None) -> web.Response:
    """Accept an async exchange or run an idempotent one; see the module's docstring.

    The keeper records the exchange when it ends (``ex.recorded_by``), or nobody does when the call
    replays an earlier exchange.
    """
    svc, agency = ex.svc, ex.agency
    assert svc is not None
    assert agency is not None
    view = gw.exchanges
    now = time.time() * 1000
    idem = idempotency_hash(agency.id, key) if key is not None else None
    fp = fingerprint(svc.provider, svc.service, ex.body) if key is not None else None
    if idem is not None:
        held = view.claims.holder(idem, now)
        if held is not None:
            gw.limits.charge(agency)  # a replay costs no provider, but it is a request of the client's
            return await _replay(gw, ex, held, fp)
    cap = agency.max_open_stored or gw.settings.max_open_stored
    if view.open_for(agency.id) >= cap:
        # Each open one is state in every gateway worker and in the keeper: bounded per client.
        raise RateLimited(f"{agency.id} has {cap} async or idempotent exchanges open; retry as they end",
                          retry_after=1)  # fmt: skip
    if not view.admits(agency.id):
        # The index of stored exchanges (every worker holds it) is nearly full: the heaviest wait.
        raise RateLimited(f"stored exchanges are at this gateway's capacity and {agency.id} holds more "
                          "than an even share; retry later", retry_after=5)  # fmt: skip
    deadline = int(now + (svc.async_ttl_s * 1000 if ex.mode is Mode.ASYNC else svc.timeout_ms))
    pending = Pending(
        exchange_id=ex.id, client=agency.id, provider=svc.provider, service=svc.service, mode=ex.mode,
        t_in=ex.t_in, deadline_ms=deadline, idempotency=idem, fingerprint=fp, request_id=ex.request_id,
        user_id=ex.user_id, purpose=ex.purpose, request_bytes=len(ex.body), gateway=gw.replies.topic,
        major=svc.major, request_sha256=hashlib.sha256(ex.body).hexdigest(), subject=ex.subject,
    )  # fmt: skip
    partition = partition_for(idem or ex.id, view.partitions)
    with gw.limits.admit(agency):
        written = await gw.hand_off(
            view.topic, pending.encode(), what="the request", key=ex.id.encode(), partition=partition,
            headers=[(H_DOC, b"pending")],
        )  # fmt: skip
        # From here on the exchange exists: the keeper finishes it (or expires it) and records it.
        ex.recorded_by = RecordedBy.KEEPER
        if idem is not None:
            # Our claim is in the log: the first claim on the key there wins.
            if not await view.reached(partition, written.offset, gw.settings.kafka_send_within_s):
                raise Unavailable(
                    "the idempotency key could not be checked in time; retry shortly", retry_after=1
                )
            held = view.claims.holder(idem, now)
            if held is None or held.exchange_id != ex.id:
                return await _replay(gw, ex, held, fp)
        meta = ex.meta(reply_to=view.topic, reply_partition=partition, deadline_ms=deadline)
        await gw.hand_off(
            gw.settings.names.requests(svc.provider, write=svc.effects is Effects.WRITE), ex.body,
            what="the request",
            headers=meta.headers(),
        )  # fmt: skip
        ex.sent()
        if ex.mode is Mode.ASYNC:
            if idem is None:
                # Read-your-writes: this worker's view holds the exchange before its caller learns its id,
                # so a GET right after the 202 finds it here (bounded: the 202 is due either way).
                await view.reached(partition, written.offset, gw.settings.kafka_send_within_s)
            gw.metrics.async_accepted.labels(agency.id, svc.provider, svc.service).inc()
            ex.outcome = Outcome.ACCEPTED
            return _accepted(ex.id, replayed=False)
        # A sync idempotent exchange: the keeper finishes it; wait for its final document.
        within = (deadline + GRACE_MS - time.time() * 1000) / 1000 + KEEPER_MARGIN_S
        doc = await view.final(ex.id, within)
    ex.replied()
    if not isinstance(doc, Final):
        # The keeper will finish and count it (expired): answered here, recorded there.
        ex.outcome = Outcome.TIMEOUT
        return problem_response(Timeout(f"{svc.key} did not answer within {svc.timeout_ms} ms"), ex.id)
    ex.outcome = doc.outcome
    return _answer(doc, replayed=False)


async def _replay(gw: Gateway, ex: Exchange, held: Claim | None, fp: str | None) -> web.Response:
    """Answer a call whose key another exchange holds: its outcome again, never a new exchange.

    Refused (409, 422), the call is an exchange of its own that the gateway records: a claim that lost
    is never processed, nor recorded, by the keeper.
    """
    svc = ex.svc
    assert svc is not None
    ex.recorded_by = RecordedBy.GATEWAY
    if held is None:  # the claim vanished (retention): treat as in flight, the caller retries
        raise IdempotencyKeyInFlight("this Idempotency-Key is being settled; retry", retry_after=1)
    eid = held.exchange_id
    if held.fingerprint != fp:
        raise IdempotencyKeyReused("this Idempotency-Key was used for another request (service or body)")
    view = gw.exchanges
    doc = await view.get(eid)
    if ex.mode is not Mode.ASYNC and isinstance(doc, Pending):
        left = (doc.deadline_ms + GRACE_MS - time.time() * 1000) / 1000 + KEEPER_MARGIN_S
        if left <= svc.timeout_ms / 1000 + KEEPER_MARGIN_S + GRACE_MS / 1000:  # a sync one: wait for it
            doc = await view.final(eid, left)
    if not isinstance(doc, Final) and ex.mode is not Mode.ASYNC:
        raise IdempotencyKeyInFlight(
            f"the exchange {eid} with this Idempotency-Key is still in flight; see GET /v1/exchanges/{eid}",
            retry_after=1,
        )
    gw.metrics.idempotent_replays.labels(ex.client, ex.provider, ex.service).inc()
    ex.outcome = Outcome.REPLAYED
    ex.recorded_by = RecordedBy.NOBODY
    if ex.mode is Mode.ASYNC:
        return _accepted(eid, replayed=True, doc=doc)
    assert isinstance(doc, Final)
    return _answer(doc, replayed=True)


def _accepted(eid: str, *, replayed: bool, doc: Doc | None = None) -> web.Response:
    view = doc.view() if doc is not None else {"exchange_id": eid, "status": Status.PENDING}
    resp = web.Response(
        body=orjson.dumps({"exchange_id": eid, "status": view["status"]}), status=202, content_type=JSON
    )
    resp.headers["Location"] = f"/v1/exchanges/{eid}"
    resp.headers["Preference-Applied"] = "respond-async"
    resp.headers["X-NDXP-Exchange-Id"] = eid
    if replayed:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp


def _answer(doc: Final, *, replayed: bool) -> web.Response:
    resp = web.Response(
        body=orjson.dumps(doc.body),
        status=doc.http_status,
        content_type=JSON if doc.status is Status.DONE else PROBLEM,
    )
    resp.headers["X-NDXP-Exchange-Id"] = doc.exchange_id
    if replayed:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp


async def get_exchange(request: web.Request) -> web.Response:
    """``GET /v1/exchanges/{exchange_id}``: the caller's own stored exchange; 404 for any other."""
    gw = request.app[GATEWAY]
    agency = authenticate(gw, request)
    gw.limits.charge(agency)  # reads are requests too: charged to the client's rate
    eid = request.match_info["exchange_id"]
    doc = await gw.exchanges.get(eid, agency.id) if _EXCHANGE_ID.match(eid) else None
    if doc is None:  # unknown, or another caller's: the same answer
        raise NotFound(f"no exchange {eid[:64]} of {agency.id}")
    prefs = preferences(request)
    wait = wait_seconds(prefs)
    if isinstance(doc, Pending) and wait > 0:
        with gw.limits.long_poll(agency):
            doc = await gw.exchanges.final(eid, wait) or doc
    resp = web.Response(body=orjson.dumps(doc.view()), status=200, content_type=JSON)
    if "wait" in prefs:
        resp.headers["Preference-Applied"] = f"wait={wait:g}"
    if isinstance(doc, Pending):
        resp.headers["Retry-After"] = "1"
    return resp
