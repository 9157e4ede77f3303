"""Agencies, hashed API keys, rate limits and access rights (default deny).

The registry's documents are those of the live registry (:mod:`broker.contracts.live`):
an agency, a key, a right. This module checks each document and keeps the
indexes the gateway asks on every exchange (a key's hash, a client's rights),
changed in place one document at a time, so that a change costs the same with
13 agencies or 10,000. The import format, ``deploy/registry.yaml``::

    agencies:
      - id: hanoi                      # short id used in paths and metrics
        code: "H26"                    # official electronic code
        name: "UBND Thành phố Hà Nội"
        roles: [operator]              # optional: operator (administers the registry), tracker
        keys_sha256: ["<hex sha256 of the API key>"]   # or {sha256: …, expires: <date or time>}
        rate_limit: 200                # requests/s (optional)
        max_in_flight: 500             # concurrent exchanges (optional)
    rights:
      hanoi: [bca/citizen, tax/*, bca/household@2]   # provider/service, provider/*, or a pinned major
"""

from __future__ import annotations

import datetime as dt
import hashlib
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from broker.contracts.catalog import Catalog, event_from_document, service_from_document, valid_name
from broker.errors import CatalogError, RegistryError

ROLES = frozenset({"operator", "tracker"})
"""``operator`` administers the whole registry; ``tracker`` may read a subject's accesses."""
RIGHT_KINDS = ("call", "subscribe", "publish")
_HEX = set("0123456789abcdef")


def parse_expiry(raw: Any, where: str) -> dt.datetime:
    """A key's expiry: a date (the key works through that day, UTC) or a time with its zone."""
    if isinstance(raw, dt.datetime):
        when = raw
    elif isinstance(raw, dt.date):
        when = dt.datetime.combine(raw + dt.timedelta(days=1), dt.time())
    elif len(str(raw)) == 10:  # a date as text
        try:
            return parse_expiry(dt.date.fromisoformat(str(raw)), where)
        except ValueError as exc:
            raise RegistryError(f"{where}: key expiry {raw!r} is not a date or an ISO 8601 time") from exc
    else:
        try:
            when = dt.datetime.fromisoformat(str(raw))
        except ValueError as exc:
            raise RegistryError(f"{where}: key expiry {raw!r} is not a date or an ISO 8601 time") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def hash_key(api_key: str) -> str:
    """The stored form of an API key: hex SHA-256."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def key_id(digest: str) -> str:
    """A key's public id: the first 16 hex digits of its hash (what ``DELETE …/keys/{key_id}`` names)."""
    return digest[:16]


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and set(text) <= _HEX


@dataclass(frozen=True, slots=True, kw_only=True)
class Agency:
    """A registered body: a client, a provider, or both."""

    id: str
    code: str
    name: str
    roles: frozenset[str] = frozenset()
    rate_limit: float | None = None
    max_in_flight: int | None = None
    max_open_stored: int | None = None
    """Async and idempotent exchanges it may have open at once (default NDXP_MAX_OPEN_STORED)."""
    callback_url: str | None = None
    """Where the platform POSTs the end of this agency's async exchanges (only ever from here,
    never from a request: no server-side request forgery)."""
    callback_secret: bytes | None = field(default=None, repr=False)
    """The HMAC-SHA256 key that signs those callbacks."""
    callback_previous_secret: bytes | None = field(default=None, repr=False)
    """The key it rotates away from: callbacks carry a signature by each while both are set."""
    certs: tuple[str, ...] = ()
    """SHA-256 fingerprints of its client certificates."""
    cert_required: bool = False
    """Its key alone is not enough: every call also presents one of its certificates (mutual TLS)."""
    own_adapter: bool = False
    """It runs its adapter itself, with its own Kafka user (the platform's generic adapter leaves its
    bound services to it)."""
    reply_secret: bytes | None = field(default=None, repr=False)
    """Its own adapter signs its replies with it (``ndxp-origin``): replies that travel on shared topics
    are taken from it only with a valid signature."""

    @property
    def callback_secrets(self) -> tuple[bytes, ...]:
        """The secrets callbacks are signed with, the current one first."""
        return tuple(s for s in (self.callback_secret, self.callback_previous_secret) if s is not None)

    @property
    def operator(self) -> bool:
        return "operator" in self.roles

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "code": self.code, "name": self.name}


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    id: str
    agency: str
    sha256: str
    expires: dt.datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Right:
    """A client's right to call a service (all versions, or one major), or to publish or
    subscribe to an event type; ``name`` is ``*`` for all of a provider's."""

    id: str
    kind: str
    client: str
    provider: str
    name: str
    major: int | None = None

    @property
    def target(self) -> str:
        base = f"{self.provider}/{self.name}"
        return base if self.major is None else f"{base}@{self.major}"

    @staticmethod
    def make_id(kind: str, client: str, provider: str, name: str, major: int | None = None) -> str:
        return f"{kind}.{client}.{provider}.{name}" + ("" if major is None else f".v{major}")


def agency_from_document(doc: Any, where: str = "agency") -> Agency:
    """Check an agency's document (its keys are documents of their own)."""
    if not isinstance(doc, dict):
        raise RegistryError(f"{where}: an agency is an object")
    unknown = sorted(set(doc) - {"id", "code", "name", "roles", "rate_limit", "max_in_flight", "callback",
                                  "certs_sha256", "cert_required", "max_open_stored",
                                  "own_adapter", "reply_secret"})  # fmt: skip
    if unknown:
        raise RegistryError(f"{where}.{unknown[0]}: unknown field")
    aid = doc.get("id")
    if not isinstance(aid, str) or not valid_name(aid) or len(aid) > 64:
        raise RegistryError(f"{where}.id: needs an 'id' of [a-z0-9_-]+ (at most 64)")
    for name in ("code", "name"):
        if name in doc and (not isinstance(doc[name], str) or not 0 < len(doc[name]) <= 512):
            raise RegistryError(f"{where}.{name}: a text of 1 to 512 characters")
    roles = doc.get("roles", [])
    if not isinstance(roles, list) or not set(roles) <= ROLES:
        raise RegistryError(f"{where}.roles: a list of {', '.join(sorted(ROLES))}")
    rate = doc.get("rate_limit")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0):
        raise RegistryError(f"{where}.rate_limit: a positive number of requests per second")
    cap = doc.get("max_in_flight")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise RegistryError(f"{where}.max_in_flight: a positive integer")
    open_cap = doc.get("max_open_stored")
    if open_cap is not None and (type(open_cap) is not int or open_cap < 1):
        raise RegistryError(f"{where}.max_open_stored: a positive integer")
    certs = doc.get("certs_sha256", [])
    if not isinstance(certs, list):
        raise RegistryError(f"{where}.certs_sha256: a list of SHA-256 fingerprints")
    fingerprints = []
    for fingerprint in certs:
        # The SHA-256 of a client certificate (DER), as `openssl x509 -fingerprint -sha256`.
        fp = str(fingerprint).lower().replace(":", "")
        if not _is_sha256(fp):
            raise RegistryError(f"{where}.certs_sha256: {fingerprint!r} is not a certificate's SHA-256")
        fingerprints.append(fp)
    cert_required = doc.get("cert_required", False)
    if not isinstance(cert_required, bool) or (cert_required and not fingerprints):
        raise RegistryError(f"{where}.cert_required: true or false, and true only with certs_sha256")
    own_adapter = doc.get("own_adapter", False)
    if not isinstance(own_adapter, bool):
        raise RegistryError(f"{where}.own_adapter: true or false")
    reply_secret = doc.get("reply_secret")
    if reply_secret is not None and (not isinstance(reply_secret, str) or len(reply_secret) < 32):
        raise RegistryError(f"{where}.reply_secret: a text of at least 32 characters")
    return Agency(
        id=aid,
        cert_required=cert_required,
        own_adapter=own_adapter,
        reply_secret=reply_secret.encode() if reply_secret is not None else None,
        code=str(doc.get("code", aid)),
        name=str(doc.get("name", aid)),
        roles=frozenset(roles),
        rate_limit=float(rate) if rate is not None else None,
        max_in_flight=cap,
        max_open_stored=open_cap,
        certs=tuple(fingerprints),
        **_callback(doc.get("callback"), where),
    )


def key_from_document(doc: Any, where: str = "key") -> ApiKey:
    if not isinstance(doc, dict) or not set(doc) <= {"id", "agency", "sha256", "expires"}:
        raise RegistryError(f"{where}: a key is {{id, agency, sha256, expires}}")
    digest = str(doc.get("sha256", "")).lower()
    if not _is_sha256(digest):
        raise RegistryError(f"{where}.sha256: {digest[:80]!r} is not a hex SHA-256")
    agency = doc.get("agency")
    if not isinstance(agency, str) or not valid_name(agency):
        raise RegistryError(f"{where}.agency: an agency id")
    expires = parse_expiry(doc["expires"], f"{where}.expires") if doc.get("expires") is not None else None
    return ApiKey(id=key_id(digest), agency=agency, sha256=digest, expires=expires)


def right_from_document(doc: Any, where: str = "right") -> Right:
    if not isinstance(doc, dict) or not set(doc) <= {"id", "kind", "client", "provider", "service", "event",
                                                     "version"}:  # fmt: skip
        raise RegistryError(f"{where}: a right is {{kind, client, provider, service|event, version}}")
    kind = doc.get("kind", "call")
    if kind not in RIGHT_KINDS:
        raise RegistryError(f"{where}.kind: one of {', '.join(RIGHT_KINDS)}")
    field_name = "service" if kind == "call" else "event"
    values = {k: doc.get(k) for k in ("client", "provider", field_name)}
    for name, value in values.items():
        if not isinstance(value, str) or not (valid_name(value) or (name == field_name and value == "*")):
            star = " or *" if name == field_name else ""
            raise RegistryError(f"{where}.{name}: a name of [a-z0-9_-]+{star}")
    major = doc.get("version")
    if major is not None and (type(major) is not int or major < 1 or kind != "call"):
        raise RegistryError(f"{where}.version: a service's major version (an integer), for calls only")
    if kind == "call" and major is not None and values["service"] == "*":
        raise RegistryError(f"{where}.version: a right to all of a provider's services names no version")
    if kind == "publish" and values["client"] != values["provider"]:
        raise RegistryError(f"{where}: only {values['provider']} publishes its own events")
    client, provider, name = str(values["client"]), str(values["provider"]), str(values[field_name])
    return Right(id=Right.make_id(kind, client, provider, name, major), kind=kind, client=client,
                 provider=provider, name=name, major=major)  # fmt: skip


class Registry:
    """Who may call what: agencies by key hash, and the rights of each; changed in place."""

    def __init__(self, catalog: Catalog | None = None) -> None:
        self.catalog = catalog if catalog is not None else Catalog()
        self.agencies: dict[str, Agency] = {}
        self.keys: dict[str, ApiKey] = {}
        self.rights: dict[str, Right] = {}
        self._by_hash: dict[str, ApiKey] = {}
        self._by_cert: dict[str, str] = {}
        self._granted: dict[str, dict[str, Counter[str]]] = {k: {} for k in RIGHT_KINDS}
        """kind → client → target (``p/s``, ``p/*``, ``p/s@N``) → how many rights grant it."""

    @classmethod
    def load(cls, path: Path, catalog: Catalog) -> Registry:
        return cls.from_dict(read_yaml(path), catalog, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, catalog: Catalog, *, source: str = "<registry>") -> Registry:
        registry = cls(catalog)
        for kind, _, doc in documents_from_import(raw, catalog, source=source):
            if kind == "agency":
                registry.put_agency(agency_from_document(doc))
            elif kind == "key":
                registry.put_key(key_from_document(doc))
            elif kind == "right":
                registry.put_right(right_from_document(doc))
        return registry

    # Changes, one document at a time (the live registry's follower applies them).

    def put_agency(self, agency: Agency) -> None:
        old = self.agencies.get(agency.id)
        if old is not None:
            for fp in old.certs:
                self._by_cert.pop(fp, None)
        self.agencies[agency.id] = agency
        for fp in agency.certs:
            self._by_cert[fp] = agency.id

    def remove_agency(self, agency_id: str) -> None:
        old = self.agencies.pop(agency_id, None)
        for fp in old.certs if old is not None else ():
            self._by_cert.pop(fp, None)

    def put_key(self, key: ApiKey) -> None:
        self.remove_key(key.id)
        self.keys[key.id] = key
        self._by_hash[key.sha256] = key

    def remove_key(self, kid: str) -> None:
        old = self.keys.pop(kid, None)
        if old is not None:
            self._by_hash.pop(old.sha256, None)

    def put_right(self, right: Right) -> None:
        self.remove_right(right.id)
        self.rights[right.id] = right
        self._granted[right.kind].setdefault(right.client, Counter())[right.target] += 1

    def remove_right(self, right_id: str) -> None:
        old = self.rights.pop(right_id, None)
        if old is None:
            return
        granted = self._granted[old.kind].get(old.client)
        if granted is not None:
            granted[old.target] -= 1
            if granted[old.target] <= 0:
                del granted[old.target]

    # What the gateway asks.

    def authenticate(self, api_key: str) -> Agency | None:
        """The agency holding ``api_key``, or ``None`` (unknown, expired, or its agency removed)."""
        # Looking up the digest, not the key, leaks nothing usable through timing.
        key = self._by_hash.get(hash_key(api_key))
        if key is None:
            return None
        if key.expires is not None and dt.datetime.now(dt.UTC) >= key.expires:
            return None  # a rotated-out key
        return self.agencies.get(key.agency)

    def authenticate_cert(self, der: bytes) -> Agency | None:
        """The agency whose client certificate (DER bytes, already verified by TLS) this is."""
        aid = self._by_cert.get(hashlib.sha256(der).hexdigest())
        return None if aid is None else self.agencies.get(aid)

    def _has(self, kind: str, client: str, provider: str, name: str, major: int | None = None) -> bool:
        granted = self._granted[kind].get(client)
        if not granted:
            return False
        return bool(
            granted.get(f"{provider}/{name}")
            or granted.get(f"{provider}/*")
            or (major is not None and granted.get(f"{provider}/{name}@{major}"))
        )

    def allowed(self, client: str, provider: str, service: str, major: int | None = None) -> bool:
        """May ``client`` call ``provider/service`` (version ``major``, when it names one)."""
        return self._has("call", client, provider, service, major)

    def allowed_services(self, client: str) -> list[str]:
        return sorted(s.key for s in self.catalog if self.allowed(client, s.provider, s.service, s.major))

    def may_publish(self, client: str, provider: str, type_: str) -> bool:
        return client == provider and self._has("publish", client, provider, type_)

    def may_subscribe(self, client: str, provider: str, type_: str) -> bool:
        return self._has("subscribe", client, provider, type_)

    def allowed_events(self, client: str) -> tuple[list[str], list[str]]:
        """The event types ``client`` may publish, and those it may subscribe to."""
        names = [(e.provider, e.type, e.name) for e in self.catalog.events.values()]
        return (
            sorted(n for p, t, n in names if self.may_publish(client, p, t)),
            sorted(n for p, t, n in names if self.may_subscribe(client, p, t)),
        )

    def subscribers(self, provider: str, type_: str) -> list[str]:
        return sorted(c for c in self._granted["subscribe"] if self.may_subscribe(c, provider, type_))

    def __iter__(self) -> Iterator[Agency]:
        return iter(list(self.agencies.values()))


def read_yaml(path: Path) -> Any:
    try:
        # libyaml's safe loader when PyYAML has it (a national registry is ten times faster to read).
        return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except FileNotFoundError as exc:
        raise RegistryError(f"{path}: registry file not found") from exc
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from exc


def _callback(raw: Any, where: str) -> dict[str, Any]:
    """``callback: {url: https://…, secret: …}`` of an agency, checked."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not {"url", "secret"} <= set(raw) <= {"url", "secret", "previous_secret"}:
        raise RegistryError(f"{where}.callback: needs 'url' and 'secret' (and, rotating, 'previous_secret')")
    url, secret = str(raw["url"]), str(raw["secret"])
    previous = raw.get("previous_secret")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"{where}.callback.url: {url[:200]!r} is not an http(s) URL")
    for name, value in (("secret", secret), ("previous_secret", previous)):
        if value is not None and len(str(value)) < 16:
            raise RegistryError(f"{where}.callback.{name}: a callback secret has at least 16 characters")
    out: dict[str, Any] = {"callback_url": url, "callback_secret": secret.encode()}
    if previous is not None:
        out["callback_previous_secret"] = str(previous).encode()
    return out


Document = tuple[str, str, dict[str, Any]]
"""A live registry document: (kind, id, document)."""


def service_id(provider: str, service: str, major: int) -> str:
    return f"{provider}/{service}/v{major}"


def documents_from_import(raw: Any, catalog: Catalog | None, *, source: str = "<registry>") -> list[Document]:
    """The documents of a registry file, checked (a :class:`RegistryError` names the entry).

    The file is ``deploy/registry.yaml``'s shape; what ``registry export`` writes adds
    ``services`` and ``event_types`` (the contracts, inline) and ``access_requests``.
    Without ``services``, the contracts are ``catalog``'s (the ``schemas/`` folder).
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("agencies"), list):
        raise RegistryError(f"{source}: expected a mapping with an 'agencies' list")
    sections = {"agencies", "rights", "events", "services", "event_types", "access_requests"}
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise RegistryError(f"{source}: unknown section {unknown[0]!r}")
    out: list[Document] = []
    agencies: set[str] = set()
    holders: dict[str, str] = {}
    certs: dict[str, str] = {}
    for i, entry in enumerate(raw["agencies"]):
        where = f"{source}: agencies[{i}]"
        if not isinstance(entry, dict):
            raise RegistryError(f"{where}: an agency is a mapping")
        doc = {k: v for k, v in entry.items() if k != "keys_sha256"}
        agency = agency_from_document(doc, where)
        if agency.id in agencies:
            raise RegistryError(f"{where}: agency {agency.id!r} is listed twice")
        agencies.add(agency.id)
        for fp in agency.certs:
            if fp in certs:
                raise RegistryError(f"{where}: a certificate of {agency.id!r} is held by {certs[fp]!r}")
            certs[fp] = agency.id
        if agency.certs:
            doc["certs_sha256"] = list(agency.certs)
        out.append(("agency", agency.id, doc))
        keys = entry.get("keys_sha256", [])
        if not isinstance(keys, list):
            raise RegistryError(f"{where}.keys_sha256: a list of key hashes")
        for key_entry in keys:
            # A key is its hex SHA-256, or {sha256: …, expires: <date or time>} for rotation.
            key_doc: dict[str, Any] = {"agency": agency.id}
            if isinstance(key_entry, dict):
                key_doc.update(key_entry)
            else:
                key_doc["sha256"] = str(key_entry)
            if key_doc.get("expires") is not None:
                key_doc["expires"] = parse_expiry(key_doc["expires"], f"{where}.keys_sha256").isoformat()
            key = key_from_document(key_doc, f"{where}.keys_sha256")
            if key.sha256 in holders:
                raise RegistryError(f"{where}: a key of {agency.id!r} is held by {holders[key.sha256]!r}")
            holders[key.sha256] = agency.id
            out.append(("key", key.id, {"id": key.id, **key_doc, "sha256": key.sha256}))
    catalog = _contracts(raw, catalog, source)
    for svc in catalog.versions():
        if svc.provider not in agencies:
            raise RegistryError(f"{source}: the catalog has services of {svc.provider!r}, which is no agency")
        doc = {"provider": svc.provider, "service": svc.service, **svc.document}
        out.append(("service", service_id(svc.provider, svc.service, svc.major), doc))
    for (provider, type_), ev in catalog.events.items():
        if provider not in agencies:
            raise RegistryError(f"{source}: the catalog has events of {provider!r}, which is no agency")
        event_doc = {"provider": provider, "event": type_, "schema": ev.schema.schema}
        out.append(("event", f"{provider}/{type_}", event_doc))
    out.extend(_rights(raw, agencies, catalog, source))
    requests = raw.get("access_requests") or []
    if not isinstance(requests, list):
        raise RegistryError(f"{source}: access_requests is a list")
    for i, request in enumerate(requests):
        if not isinstance(request, dict) or not isinstance(request.get("id"), str):
            raise RegistryError(f"{source}: access_requests[{i}] needs an id")
        out.append(("access", request["id"], request))
    return out


def _contracts(raw: dict[str, Any], catalog: Catalog | None, source: str) -> Catalog:
    if "services" not in raw and "event_types" not in raw:
        if catalog is None:
            raise RegistryError(f"{source}: has no services, and no schemas folder was given")
        return catalog
    found = Catalog()
    try:
        for i, doc in enumerate(raw.get("services") or []):
            where = f"{source}: services[{i}]"
            if (
                not isinstance(doc, dict)
                or not valid_name(str(doc.get("provider", "")))
                or not valid_name(str(doc.get("service", "")))
            ):
                raise RegistryError(f"{where}: needs a provider and a service of [a-z0-9_-]+")
            found.put(service_from_document(doc, doc["provider"], doc["service"], source=where))
        for i, doc in enumerate(raw.get("event_types") or []):
            where = f"{source}: event_types[{i}]"
            if (
                not isinstance(doc, dict)
                or not valid_name(str(doc.get("provider", "")))
                or not valid_name(str(doc.get("event", "")))
            ):
                raise RegistryError(f"{where}: needs a provider, an event of [a-z0-9_-]+ and a schema")
            found.put_event(
                event_from_document(doc.get("schema"), doc["provider"], doc["event"], source=where)
            )
    except CatalogError as exc:
        raise RegistryError(str(exc)) from exc
    return found


def _rights(raw: dict[str, Any], agencies: set[str], catalog: Catalog, source: str) -> list[Document]:
    """``rights: {client: [provider/service | provider/* | provider/service@N]}`` and
    ``events: {publish: {agency: [provider/type…]}, subscribe: {agency: [provider/type | provider/*…]}}``."""
    out: list[Document] = []
    tables: list[tuple[str, str, Any]] = [("call", "rights", raw.get("rights"))]
    events = raw.get("events") or {}
    if not isinstance(events, dict) or not set(events) <= {"publish", "subscribe"}:
        raise RegistryError(f"{source}: 'events' has 'publish' and 'subscribe' mappings only")
    tables += [(kind, f"events.{kind}", events.get(kind)) for kind in ("publish", "subscribe")]
    for kind, section, table in tables:
        table = table or {}
        if not isinstance(table, dict):
            raise RegistryError(f"{source}: {section} must map agency id to a list")
        for client, items in table.items():
            if client not in agencies:
                raise RegistryError(f"{source}: {section} names unknown agency {client!r}")
            for item in items or []:
                target, _, pinned = str(item).partition("@")
                provider, _, name = target.partition("/")
                where = f"{source}: {section} {client} → {item!r}"
                if provider not in agencies:
                    raise RegistryError(f"{where} names unknown agency {provider!r}")
                doc: dict[str, Any] = {"kind": kind, "client": str(client), "provider": provider}
                doc["service" if kind == "call" else "event"] = name
                if pinned:
                    if not pinned.isdigit():
                        raise RegistryError(f"{where}: a pinned version is @<major>")
                    doc["version"] = int(pinned)
                check_right_target(doc, catalog, where)
                right = right_from_document(doc, where)
                out.append(("right", right.id, {"id": right.id, **doc}))
    return out


def check_right_target(doc: dict[str, Any], catalog: Catalog, where: str) -> None:
    """A right names a service (version) or event type the catalog has."""
    provider = doc["provider"]
    if doc["kind"] == "call":
        name = doc.get("service")
        if name == "*":
            return
        major = doc.get("version")
        found = (
            catalog.get(provider, str(name)) if major is None else catalog.version(provider, str(name), major)
        )
        if found is None:
            raise RegistryError(f"{where}: names unknown service")
        return
    name = doc.get("event")
    if name != "*" and catalog.event(provider, str(name)) is None:
        raise RegistryError(f"{where}: names no event type")
    if doc["kind"] == "publish" and doc["client"] != provider:
        raise RegistryError(f"{where}: only {provider} publishes its events")
