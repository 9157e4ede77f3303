"""The management API (DESIGN §3.1): agencies, keys, access requests, rights, service versions, changes.

Served on its own listener (``NDXP_ADMIN_HOST``/``NDXP_ADMIN_PORT``), never on
the exchange port. Callers authenticate as exchange callers do; the
``operator`` role administers everything, any other agency only itself and
its own services. Every change goes through :class:`RegistryWriter`: decided
on the registry read to its end, written with its change log entry in one
transaction, and applied by every part within a second. An attempt on
another agency's documents is refused (403) and logged as refused.

Every resource has an ``ETag`` (its revision); a write with ``If-Match``
that is stale gets 409 ``conflict``.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from broker.contracts.catalog import Effects, parse_version, service_from_document
from broker.contracts.compat import breaking_changes
from broker.contracts.live import Change, Entry, LiveRegistry
from broker.contracts.registry import (
    Agency,
    Right,
    agency_from_document,
    check_right_target,
    hash_key,
    key_from_document,
    key_id,
    parse_expiry,
    right_from_document,
    service_id,
)
from broker.errors import (
    CatalogError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NdxpError,
    NotFound,
    RegistryError,
)
from broker.gateway.auth import address_of, credential_agency
from broker.gateway.limits import Limits
from broker.gateway.middleware import header
from broker.kafka import Topics, ensure_topics, members
from broker.kafka.registry import Proposal, RegistryFollower, RegistryWriter, new_change
from broker.metrics import RegistryMetrics
from broker.model.envelope import new_exchange_id
from broker.settings import Settings

log = logging.getLogger(__name__)

MAX_KEY_DAYS = 3 * 366
"""Longest a key issued here lives (rotate before)."""


@dataclass(slots=True, kw_only=True)
class Admin:
    """The management API's parts."""

    settings: Settings
    follower: RegistryFollower
    writer: RegistryWriter
    metrics: RegistryMetrics
    limits: Limits

    @property
    def live(self) -> LiveRegistry:
        return self.follower.live


ADMIN = web.AppKey("admin", Admin)


def json_response(data: Any, status: int = 200, etag: int | None = None) -> web.Response:
    resp = web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
    if etag is not None:
        resp.headers["ETag"] = f'"{etag}"'
    return resp


def _caller(request: web.Request) -> Agency:
    """The calling agency (API key or verified client certificate), as the exchange port has it."""
    admin = request.app[ADMIN]
    address = address_of(request, admin.settings.trusted_proxies)
    try:
        agency = credential_agency(admin.live.registry, request)
    except NdxpError:
        admin.limits.check_address(address)
        admin.limits.auth_failed(address)
        raise
    return agency


async def _body(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from exc


def _if_match(request: web.Request) -> int | None:
    given = header(request, "If-Match")
    if given is None or given.strip() == "*":
        return None
    text = given.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise InvalidRequest("If-Match takes the ETag you read (a quoted revision)")
    return int(text)


def _check_match(live: LiveRegistry, kind: str, id_: str, expected: int | None) -> None:
    if expected is not None and live.rev(kind, id_) != expected:
        raise Conflict(f"{kind} {id_} is at revision {live.rev(kind, id_)}, not {expected}: read it again")


def _entry(live: LiveRegistry, change: Change, kind: str, id_: str, doc: dict[str, Any] | None) -> Entry:
    return Entry(
        kind=kind,
        id=id_,
        rev=live.rev(kind, id_) + 1,
        doc=doc,
        change_id=change.change_id,
        at=change.at,
        actor=change.actor,
    )


async def _refusing(
    request: web.Request,
    caller: Agency,
    action: str,
    target: str,
    allowed: bool,
    why: str,
    parties: tuple[str, ...] = (),
) -> None:
    """403 unless ``allowed``; a refusal is in the change log (who tried what)."""
    if allowed:
        return
    admin = request.app[ADMIN]
    change = new_change(caller.id, action, target, outcome="refused", detail=why, parties=parties)
    await admin.writer.write(lambda live: Proposal(change=change))
    raise Forbidden(why)


def _decide(
    write: Callable[[LiveRegistry, Change], list[Entry]],
    actor: str,
    action: str,
    target: str,
    parties: tuple[str, ...] = (),
) -> Callable[[LiveRegistry], Proposal]:
    def decide(live: LiveRegistry) -> Proposal:
        change = new_change(actor, action, target, parties=parties)
        return Proposal(entries=write(live, change), change=change)

    return decide


def _invalid(exc: RegistryError | CatalogError) -> InvalidRequest:
    return InvalidRequest(str(exc))


# -- agencies ---------------------------------------------------------------------------------------


def _public_agency(doc: dict[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    if "callback" in out:
        out["callback"] = {"url": out["callback"]["url"]}  # the secrets are write-only
    out.pop("reply_secret", None)
    return out


async def list_agencies(request: web.Request) -> web.Response:
    caller = _caller(request)
    live = request.app[ADMIN].live
    docs = [e.doc for e in live.of_kind("agency") if caller.operator or e.id == caller.id]
    return json_response({"agencies": [_public_agency(d) for d in docs if d is not None]})


async def create_agency(request: web.Request) -> web.Response:
    caller = _caller(request)
    body = await _body(request)
    aid = str(body.get("id", "")) if isinstance(body, dict) else ""
    await _refusing(
        request, caller, "agency.create", f"agency/{aid}", caller.operator, "only an operator adds agencies"
    )
    try:
        agency_from_document(body, "agency")
    except RegistryError as exc:
        raise _invalid(exc) from exc

    def write(live: LiveRegistry, change: Change) -> list[Entry]:
        if live.doc("agency", aid) is not None:
            raise Conflict(f"agency {aid} exists")
        return [_entry(live, change, "agency", aid, body)]

    await request.app[ADMIN].writer.write(_decide(write, caller.id, "agency.create", f"agency/{aid}", (aid,)))
    live = request.app[ADMIN].live
    resp = json_response(_public_agency(body), 201, etag=live.rev("agency", aid))
    resp.headers["Location"] = f"/admin/v1/agencies/{aid}"
    return resp


def _agency_or_404(live: LiveRegistry, aid: str) -> dict[str, Any]:
    doc = live.doc("agency", aid)
    if doc is None:
        raise NotFound(f"no agency {aid}")
    return doc


async def get_agency(request: web.Request) -> web.Response:
    caller = _caller(request)
    aid = request.match_info["id"]
    live = request.app[ADMIN].live
    if not (caller.operator or caller.id == aid):
        raise NotFound(f"no agency {aid}")  # another's: as if it did not exist
    doc = _agency_or_404(live, aid)
    keys = [
        {"key_id": e.id, **({"expires": e.doc["expires"]} if e.doc and e.doc.get("expires") else {})}
        for e in live.of_kind("key")
        if e.doc is not None and e.doc["agency"] == aid
    ]
    return json_response({**_public_agency(doc), "keys": keys}, etag=live.rev("agency", aid))


async def patch_agency(request: web.Request) -> web.Response:
    caller = _caller(request)
    aid = request.match_info["id"]
    body = await _body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("a PATCH body is a JSON object of the fields to change (null removes one)")
    await _refusing(
        request,
        caller,
        "agency.update",
        f"agency/{aid}",
        caller.operator or caller.id == aid,
        f"{caller.id} may not change agency {aid}",
    )
    if "roles" in body and not caller.operator:
        await _refusing(request, caller, "agency.update", f"agency/{aid}", False, "only operators set roles")
    if "id" in body and body["id"] != aid:
        raise InvalidRequest("id: an agency's id does not change")
    expected = _if_match(request)

    def write(live: LiveRegistry, change: Change) -> list[Entry]:
        _check_match(live, "agency", aid, expected)
        doc = {**_agency_or_404(live, aid), **body}
        doc = {k: v for k, v in doc.items() if v is not None}
        try:
            agency_from_document(doc, "agency")
        except RegistryError as exc:
            raise _invalid(exc) from exc
        return [_entry(live, change, "agency", aid, doc)]

    await request.app[ADMIN].writer.write(_decide(write, caller.id, "agency.update", f"agency/{aid}", (aid,)))
    live = request.app[ADMIN].live
    return json_response(_public_agency(_agency_or_404(live, aid)), etag=live.rev("agency", aid))


async def delete_agency(request: web.Request) -> web.Response:
    caller = _caller(request)
    aid = request.match_info["id"]
    await _refusing(
        request,
        caller,
        "agency.delete",
        f"agency/{aid}",
        caller.operator,
        "only an operator removes agencies",
    )
    expected = _if_match(request)

    def write(live: LiveRegistry, change: Change) -> list[Entry]:
        _check_match(live, "agency", aid, expected)
        _agency_or_404(live, aid)
        if live.catalog.versions(aid):
            raise Conflict(f"agency {aid} provides services: retire them first")
        keys = [e.id for e in live.of_kind("key") if e.doc is not None and e.doc["agency"] == aid]
        rights = [
            e.id
            for e in live.of_kind("right")
            if e.doc is not None and aid in (e.doc["client"], e.doc["provider"])
        ]
        return [
            _entry(live, change, "agency", aid, None),
            *(_entry(live, change, "key", k, None) for k in keys),
            *(_entry(live, change, "right", r, None) for r in rights),
        ]

    admin = request.app[ADMIN]
    await admin.writer.write(_decide(write, caller.id, "agency.delete", f"agency/{aid}", (aid,)))
    if _sasl(admin.settings) and admin.settings.kafka_users == "kafka":
        await members.revoke(admin.settings, aid)  # its member user (if it had one) and its ACLs go too
    elif _sasl(admin.settings):
        log.warning("agency %s left: delete its KafkaUser %s (Strimzi's User Operator owns it)",
                    aid, members.member_user(aid))  # fmt: skip
    return web.Response(status=204)


def _sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL")


async def kafka_credentials(request: web.Request) -> web.Response:
    """A provider's own Kafka user for the adapter it runs on its premises (SCRAM-SHA-512 over TLS,
    ACLs to its own topics only), or a new password for it: shown once (Kafka keeps its hash)."""
    caller = _caller(request)
    aid = request.match_info["id"]
    await _refusing(
        request,
        caller,
        "kafka.credentials",
        f"agency/{aid}",
        caller.operator,
        "only an operator issues Kafka credentials",
    )
    admin = request.app[ADMIN]
    _agency_or_404(admin.live, aid)
    if not _sasl(admin.settings):
        raise Conflict("this platform's Kafka has no users of its own (not SASL): run it with SASL_SSL, "
                       "e.g. `ndxp kafka start --secure`")  # fmt: skip
    settings = admin.settings
    if settings.kafka_users == "kafka":
        creds = await members.grant(settings, aid)
        issued: dict[str, object] = {"username": creds.username, "password": creds.password}
    else:  # Strimzi's User Operator owns the users: the KafkaUser to apply, its password in a Secret
        await members.ensure_member_topics(settings, aid)
        user = members.kafka_user(settings, aid)
        issued = {"username": members.member_user(aid), "password": None,
                  "password_secret": members.member_user(aid), "kafka_user": user}  # fmt: skip

    reply_secret = secrets.token_urlsafe(32)

    def write(live: LiveRegistry, change: Change) -> list[Entry]:
        # From now on its own adapter serves it (the platform's generic one leaves its bindings), and
        # signs its replies: on shared topics, a reply is taken only with its provider's signature.
        doc = {**_agency_or_404(live, aid), "own_adapter": True, "reply_secret": reply_secret}
        return [_entry(live, change, "agency", aid, doc)]

    await admin.writer.write(_decide(write, caller.id, "kafka.credentials", f"agency/{aid}", (aid,)))
    cafile = settings.kafka_ssl_cafile
    return json_response(
        {**issued, "bootstrap": settings.kafka_member_bootstrap or settings.kafka_bootstrap,
         "security_protocol": settings.kafka_security_protocol, "sasl_mechanism": members.MECHANISM,
         "ca": cafile.read_text() if cafile is not None else None, "reply_secret": reply_secret,
         "acls": len(members.grants(settings, aid))},
        201,
    )  # fmt: skip


# -- keys -------------------------------------------------------------------------------------------


async def issue_key(request: web.Request) -> web.Response:
    caller = _caller(request)
    aid = request.match_info["id"]
    body = await _body(request)
    await _refusing(
        request,
        caller,
        "key.issue",
        f"agency/{aid}",
        caller.operator or caller.id == aid,
        f"{caller.id} may not issue keys of {aid}",
    )
    now = dt.datetime.now(dt.UTC)
    raw_expiry = body.get("expires") if isinstance(body, dict) else None
    try:
        expires = now + dt.timedelta(days=365)
        if raw_expiry is not None:
            expires = parse_expiry(raw_expiry, "expires")
    except RegistryError as exc:
        raise _invalid(exc) from exc
    if expires <= now:
        raise InvalidRequest("expires: a key's expiry is in the future")
    if expires > now + dt.timedelta(days=MAX_KEY_DAYS):
        raise InvalidRequest(f"expires: at most {MAX_KEY_DAYS} days from now")
    key = f"ndxp_{secrets.token_urlsafe(32)}"
    digest = hash_key(key)
    kid = key_id(digest)
    doc = {"id": kid, "agency": aid, "sha256": digest, "expires": expires.isoformat()}
    key_from_document(doc)

    def write(live: LiveRegistry, change: Change) -> list[Entry]:
        _agency_or_404(live, aid)
        return [_entry(live, change, "key", kid, doc)]

    await request.app[ADMIN].writer.write(_decide(write, caller.id, "key.issue", f"key/{aid}/{kid}", (aid,)))
    return json_response({"key_id": kid, "key": key, "expires": doc["expires"]}, 201)


async def revoke_key(request: web.Request) -> web.Response:
    caller = _caller(request)
    aid, kid = request.match_info["id"], request.match_info["key_id"]
    await _refusing(
        request,
        caller,
        "key.revoke",
        f"key/{aid}/{kid}",
        caller.operator or caller.id == aid,
        f"{caller.id} may not revoke keys of {aid}",
    )

    def write(live: LiveRegistry, change: Change) -> list[Entry]:
        doc = live.doc("key", kid)
        if doc is None or doc.get("agency") != aid:
            raise NotFound(f"agency {aid} has no key {kid}")
        return [_entry(live, change, "key", kid, None)]

    await request.app[ADMIN].writer.write(_decide(write, caller.id, "key.revoke", f"key/{aid}/{kid}", (aid,)))
    return web.Response(status=204)


# -- services ---------------------------------------------------------------------------------------


async def list_versions(request: web.Request) -> web.Response:
    _caller(request)
    live = request.app[ADMIN].live
    out = []
    for svc in live.catalog.versions():
        default = live.catalog.get(svc.provider, svc.service)
        out.append(
            {
                "provider": svc.provider,
                "service": svc.service,
                "version": svc.version,
                "major": svc.major,
                "state": svc.state.value,
                "default": default is svc,
                "etag": live.rev("service", service_id(svc.provider, svc.service, svc.major)),
            }
        )
    return json_response({"services": out})


async def publish_service(request: web.Request) -> web.Response:
    caller = _caller(request)
    provider, name = request.match_info["provider"], request.match_info["service"]
    body = await _body(request)
    admin = request.app[ADMIN]
    target = f"service/{provider}/{name}"
    await _refusing(
        request,
        caller,
        "service.publish",
        target,
        caller.operator or caller.id == provider,
        f"{caller.id} may not publish services of {provider}",
    )
    if not isinstance(body, dict):
        raise InvalidRequest("a service version is a JSON object (a schemas/ document)")
    doc = {**body, "provider": provider, "service": name}
    try:
        svc = service_from_document(doc, provider, name, source="the service")
    except CatalogError as exc:
        raise _invalid(exc) from exc
    sid = service_id(provider, name, svc.major)
    expected = _if_match(request)
    topics = Topics(admin.settings)
    await ensure_topics(
        admin.settings,
        [*topics.requests(provider)] + ([topics.data(provider)] if svc.effects is Effects.WRITE else []),
    )

    def write(live: LiveRegistry, change: Change) -> list[Entry]:
        _check_match(live, "service", sid, expected)
        if live.doc("agency", provider) is None:
            raise InvalidRequest(f"provider: {provider} is no agency")
        old = live.catalog.version(provider, name, svc.major)
        if old is not None:
            if old.document == svc.document:
                return []
            if (svc.major, svc.minor) <= (old.major, old.minor) and old.state is svc.state:
                raise Conflict(f"version: {svc.version} is not above {old.version}: publish a higher version")
            broken = breaking_changes(
                old.request.schema, old.response.schema, svc.request.schema, svc.response.schema
            )
            if broken:
                raise InvalidRequest(
                    f"version {svc.version} would break callers of {old.version}: {'; '.join(broken)}; "
                    f"publish it as a new major version ({svc.major + 1})",
                    extra={"breaking": broken},
                )
        return [_entry(live, change, "service", sid, doc)]

    proposal = await admin.writer.write(
        _decide(write, caller.id, "service.publish", f"{target}/v{svc.major}", (provider,))
    )
    created = proposal is not None and proposal.entries and proposal.entries[0].rev == 1
    described = {
        **svc.describe(),
        "major": svc.major,
        "default": admin.live.catalog.get(provider, name) is svc,
    }
    return json_response(described, 201 if created else 200, etag=admin.live.rev("service", sid))


# -- access requests and rights --------------------------------------------------------------------


def _access_view(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc)


def _right_request(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("an access request is {client, provider, service | event, purpose}")
    unknown = sorted(set(body) - {"client", "provider", "service", "event", "version", "purpose", "kind"})
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: unknown field")
    if ("service" in body) == ("event" in body):
        raise InvalidRequest("service, event: name exactly one")
    purpose = body.get("purpose")
    if not isinstance(purpose, str) or not 0 < len(purpose) <= 500:
        raise InvalidRequest("purpose: why the data is needed (1 to 500 characters)")
    kind = "call" if "service" in body else body.get("kind", "subscribe")
    if kind not in ("call", "subscribe"):
        raise InvalidRequest("kind: an event right is to subscribe")
    right = {
        "kind": kind,
        **{k: body[k] for k in ("client", "provider", "service", "event", "version") if k in body},
    }
    try:
        right_from_document(right, "right")
    except RegistryError as exc:
        raise _invalid(exc) from exc
    if isinstance(body.get("version"), str):
        right["version"] = parse_version(body["version"], "version")[0]
    return right


async def create_access_request(request: web.Request) -> web.Response:
    caller = _caller(request)
    body = await _body(request)
    right = _right_request(body)
    client = right["client"]
    await _refusing(
        request,
        caller,
        "access.request",
        f"agency/{client}",
        caller.operator or caller.id == client,
        f"{caller.id} may not ask for rights of {client}",
    )
    rid = new_exchange_id()
    doc = {
        "id": rid,
        "right": right,
        "purpose": body["purpose"],
        "state": "pending",
        "requested_by": caller.id,
        "requested_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }

    def write(live: LiveRegistry, change: Change) -> list[Entry]:
        for party in (client, right["provider"]):
            if live.doc("agency", party) is None:
                raise InvalidRequest(f"{'client' if party == client else 'provider'}: {party} is no agency")
        try:
            check_right_target(right, live.catalog, "the request")
        except RegistryError as exc:
            raise _invalid(exc) from exc
        return [_entry(live, change, "access", rid, doc)]

    await request.app[ADMIN].writer.write(
        _decide(write, caller.id, "access.request", f"access/{rid}", (client, right["provider"]))
    )
    resp = json_response(_access_view(doc), 201, etag=1)
    resp.headers["Location"] = f"/admin/v1/access-requests/{rid}"
    return resp


def _concerns(caller: Agency, doc: dict[str, Any]) -> bool:
    right = doc.get("right", doc)
    return caller.operator or caller.id in (right.get("client"), right.get("provider"))


async def list_access_requests(request: web.Request) -> web.Response:
    caller = _caller(request)
    live = request.app[ADMIN].live
    docs = [e.doc for e in live.of_kind("access") if e.doc is not None and _concerns(caller, e.doc)]
    state = request.query.get("state")
    return json_response({"access_requests": [d for d in docs if state in (None, d.get("state"))]})


async def decide_access_request(request: web.Request) -> web.Response:
    caller = _caller(request)
    rid, verdict = request.match_info["id"], request.match_info["verdict"]
    admin = request.app[ADMIN]
    doc = admin.live.doc("access", rid)
    if doc is None or not _concerns(caller, doc):
        raise NotFound(f"no access request {rid}")
    provider = doc["right"]["provider"]
    await _refusing(
        request,
        caller,
        f"access.{verdict}",
        f"access/{rid}",
        caller.operator or caller.id == provider,
        f"only {provider} (the provider that owns the data) or an operator decides it",
    )
    expected = _if_match(request)

    def write(live: LiveRegistry, change: Change) -> list[Entry]:
        _check_match(live, "access", rid, expected)
        current = live.doc("access", rid)
        assert current is not None
        if current["state"] != "pending":
            raise Conflict(f"access request {rid} is already {current['state']}")
        decided = {
            **current,
            "state": "approved" if verdict == "approve" else "rejected",
            "decided_by": caller.id,
            "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        out = [_entry(live, change, "access", rid, decided)]
        if verdict == "approve":
            right = right_from_document(current["right"])
            decided["right_id"] = right.id
            out.append(_entry(live, change, "right", right.id, {"id": right.id, **current["right"]}))
        return out

    await admin.writer.write(
        _decide(write, caller.id, f"access.{verdict}", f"access/{rid}", (doc["right"]["client"], provider))
    )
    return json_response(
        _access_view(admin.live.doc("access", rid) or {}), etag=admin.live.rev("access", rid)
    )


def _right_view(right: Right) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": right.id,
        "kind": right.kind,
        "client": right.client,
        "provider": right.provider,
    }
    out["service" if right.kind == "call" else "event"] = right.name
    if right.major is not None:
        out["version"] = right.major
    return out


async def list_rights(request: web.Request) -> web.Response:
    caller = _caller(request)
    live = request.app[ADMIN].live
    rights = [
        _right_view(r)
        for r in live.registry.rights.values()
        if caller.operator or caller.id in (r.client, r.provider)
    ]
    client = request.query.get("client")
    provider = request.query.get("provider")
    rights = [r for r in rights if client in (None, r["client"]) and provider in (None, r["provider"])]
    return json_response({"rights": sorted(rights, key=lambda r: r["id"])})


async def revoke_right(request: web.Request) -> web.Response:
    caller = _caller(request)
    rid = request.match_info["id"]
    live = request.app[ADMIN].live
    right = live.registry.rights.get(rid)
    if right is None or not (caller.operator or caller.id in (right.client, right.provider)):
        raise NotFound(f"no right {rid}")
    await _refusing(
        request,
        caller,
        "right.revoke",
        f"right/{rid}",
        caller.operator or caller.id == right.provider,
        f"only {right.provider} (the provider) or an operator revokes it",
    )
    expected = _if_match(request)

    def write(live: LiveRegistry, change: Change) -> list[Entry]:
        _check_match(live, "right", rid, expected)
        if live.doc("right", rid) is None:
            raise NotFound(f"no right {rid}")
        return [_entry(live, change, "right", rid, None)]

    await request.app[ADMIN].writer.write(
        _decide(write, caller.id, "right.revoke", f"right/{rid}", (right.client, right.provider))
    )
    return web.Response(status=204)


# -- the change log --------------------------------------------------------------------------------


async def list_changes(request: web.Request) -> web.Response:
    caller = _caller(request)
    admin = request.app[ADMIN]
    await admin.follower.caught_up()
    since = request.query.get("since", "")
    try:
        limit = max(1, min(10_000, int(request.query.get("limit", "1000"))))
    except ValueError:
        raise InvalidRequest("limit: an integer") from None
    out = []
    for change in admin.follower.changes or []:
        if change.change_id <= since:
            continue
        if not caller.operator and change.actor != caller.id and caller.id not in change.parties:
            continue
        out.append(change.describe())
        if len(out) >= limit:
            break
    return json_response({"changes": out})


def routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/v1/agencies", list_agencies)
    r.add_post("/admin/v1/agencies", create_agency)
    r.add_get("/admin/v1/agencies/{id}", get_agency)
    r.add_patch("/admin/v1/agencies/{id}", patch_agency)
    r.add_delete("/admin/v1/agencies/{id}", delete_agency)
    r.add_post("/admin/v1/agencies/{id}/keys", issue_key)
    r.add_post("/admin/v1/agencies/{id}/kafka-credentials", kafka_credentials)
    r.add_delete("/admin/v1/agencies/{id}/keys/{key_id}", revoke_key)
    r.add_get("/admin/v1/services", list_versions)
    r.add_put("/admin/v1/services/{provider}/{service}", publish_service)
    r.add_get("/admin/v1/access-requests", list_access_requests)
    r.add_post("/admin/v1/access-requests", create_access_request)
    r.add_post("/admin/v1/access-requests/{id}/{verdict:approve|reject}", decide_access_request)
    r.add_get("/admin/v1/rights", list_rights)
    r.add_delete("/admin/v1/rights/{id}", revoke_right)
    r.add_get("/admin/v1/changes", list_changes)
