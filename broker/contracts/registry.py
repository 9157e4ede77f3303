"""Agencies, hashed API keys, rate limits and access rights (default deny).

The registry is YAML::

    agencies:
      - id: hanoi                      # short id used in paths and metrics
        code: "H26"                    # official electronic code
        name: "UBND Thành phố Hà Nội"
        keys_sha256: ["<hex sha256 of the API key>"]
        rate_limit: 200                # requests/s (optional)
        max_in_flight: 500             # concurrent exchanges (optional)
    rights:
      hanoi: [bca/citizen, tax/*]      # provider/service, or provider/* for all

Loading checks every right against the agencies and the catalog and fails
with a :class:`RegistryError` naming the file and the fault.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from broker.contracts.catalog import Catalog, valid_name
from broker.errors import RegistryError


def _expiry(raw: Any, where: str) -> dt.datetime:
    """A key's expiry: a date (the key works through that day, UTC) or a time with its zone."""
    if isinstance(raw, dt.datetime):
        when = raw
    elif isinstance(raw, dt.date):
        when = dt.datetime.combine(raw + dt.timedelta(days=1), dt.time())
    else:
        try:
            when = dt.datetime.fromisoformat(str(raw))
        except ValueError as exc:
            raise RegistryError(f"{where}: key expiry {raw!r} is not a date or an ISO 8601 time") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def hash_key(api_key: str) -> str:
    """The stored form of an API key: hex SHA-256."""
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Agency:
    """A registered body: a client, a provider, or both."""

    id: str
    code: str
    name: str
    rate_limit: float | None = None
    max_in_flight: int | None = None
    callback_url: str | None = None
    """Where the platform POSTs the end of this agency's async exchanges (only ever from here,
    never from a request: no server-side request forgery)."""
    callback_secret: bytes | None = field(default=None, repr=False)
    """The HMAC-SHA256 key that signs those callbacks."""

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "code": self.code, "name": self.name}


class Registry:
    """Who may call what: agencies by key hash, and the allowed services of each."""

    def __init__(
        self,
        agencies: dict[str, Agency],
        key_hashes: dict[str, str],
        rights: dict[str, frozenset[str]],
        expiry: dict[str, dt.datetime] | None = None,
        certs: dict[str, str] | None = None,
        *,
        publish: dict[str, frozenset[str]] | None = None,
        subscribe: dict[str, frozenset[str]] | None = None,
    ) -> None:
        self._publish = publish or {}
        self._subscribe = subscribe or {}
        self.agencies = agencies
        self._by_cert = certs or {}
        self._by_hash = key_hashes
        self._rights = rights
        self._expiry = expiry or {}

    @classmethod
    def load(cls, path: Path, catalog: Catalog) -> Registry:
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError as exc:
            raise RegistryError(f"{path}: registry file not found") from exc
        except yaml.YAMLError as exc:
            raise RegistryError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(raw, catalog, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, catalog: Catalog, *, source: str = "<registry>") -> Registry:
        if not isinstance(raw, dict) or not isinstance(raw.get("agencies"), list):
            raise RegistryError(f"{source}: expected a mapping with an 'agencies' list")
        agencies: dict[str, Agency] = {}
        hashes: dict[str, str] = {}
        expiry: dict[str, dt.datetime] = {}
        certs: dict[str, str] = {}
        for i, entry in enumerate(raw["agencies"]):
            where = f"{source}: agencies[{i}]"
            if not isinstance(entry, dict) or not valid_name(str(entry.get("id", ""))):
                raise RegistryError(f"{where}: needs an 'id' of [a-z0-9_-]+")
            aid = str(entry["id"])
            if aid in agencies:
                raise RegistryError(f"{where}: agency {aid!r} is listed twice")
            for key_entry in entry.get("keys_sha256", []):
                # A key is its hex SHA-256, or {sha256: …, expires: <date or time>} for rotation.
                expires = None
                if isinstance(key_entry, dict):
                    expires = _expiry(key_entry.get("expires"), where)
                    key_entry = key_entry.get("sha256", "")
                digest = str(key_entry).lower()
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise RegistryError(f"{where}: {digest!r} is not a hex SHA-256")
                if digest in hashes:
                    raise RegistryError(f"{where}: a key of {aid!r} is already held by {hashes[digest]!r}")
                hashes[digest] = aid
                if expires is not None:
                    expiry[digest] = expires
            for fingerprint in entry.get("certs_sha256", []):
                # The SHA-256 of a client certificate (DER), as `openssl x509 -fingerprint -sha256`.
                fp = str(fingerprint).lower().replace(":", "")
                if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
                    raise RegistryError(f"{where}: {fingerprint!r} is not a certificate's SHA-256")
                if fp in certs:
                    raise RegistryError(f"{where}: a certificate of {aid!r} is already held by {certs[fp]!r}")
                certs[fp] = aid
            agencies[aid] = Agency(
                id=aid,
                code=str(entry.get("code", aid)),
                name=str(entry.get("name", aid)),
                rate_limit=float(entry["rate_limit"]) if "rate_limit" in entry else None,
                max_in_flight=int(entry["max_in_flight"]) if "max_in_flight" in entry else None,
                **_callback(entry.get("callback"), where),
            )
        for provider in catalog.providers():
            if provider not in agencies:
                raise RegistryError(f"{source}: the catalog has services of {provider!r}, which is no agency")
        rights: dict[str, frozenset[str]] = {}
        raw_rights = raw.get("rights", {}) or {}
        if not isinstance(raw_rights, dict):
            raise RegistryError(f"{source}: 'rights' must map agency id to a list of services")
        for client, services in raw_rights.items():
            if client not in agencies:
                raise RegistryError(f"{source}: rights name unknown agency {client!r}")
            allowed: set[str] = set()
            for item in services or []:
                provider, _, service = str(item).partition("/")
                if provider not in agencies:
                    raise RegistryError(
                        f"{source}: right {client} → {item!r} names unknown agency {provider!r}"
                    )
                if service == "*":
                    allowed.update(s.key for s in catalog.of_provider(provider))
                elif catalog.get(provider, service) is None:
                    raise RegistryError(f"{source}: right {client} → {item!r} names unknown service")
                else:
                    allowed.add(f"{provider}/{service}")
            rights[str(client)] = frozenset(allowed)
        for provider, _ in catalog.events:
            if provider not in agencies:
                raise RegistryError(f"{source}: the catalog has events of {provider!r}, which is no agency")
        publish, subscribe = _event_rights(raw.get("events"), agencies, catalog, source)
        return cls(agencies, hashes, rights, expiry, certs, publish=publish, subscribe=subscribe)

    def authenticate(self, api_key: str) -> Agency | None:
        """The agency holding ``api_key``, or ``None``."""
        # Looking up the digest, not the key, leaks nothing usable through timing.
        digest = hash_key(api_key)
        aid = self._by_hash.get(digest)
        if aid is None:
            return None
        expires = self._expiry.get(digest)
        if expires is not None and dt.datetime.now(dt.UTC) >= expires:
            return None  # a rotated-out key
        return self.agencies[aid]

    def authenticate_cert(self, der: bytes) -> Agency | None:
        """The agency whose client certificate (DER bytes, already verified by TLS) this is."""
        aid = self._by_cert.get(hashlib.sha256(der).hexdigest())
        return None if aid is None else self.agencies[aid]

    def allowed(self, client: str, provider: str, service: str) -> bool:
        return f"{provider}/{service}" in self._rights.get(client, frozenset())

    def allowed_services(self, client: str) -> list[str]:
        return sorted(self._rights.get(client, frozenset()))

    def may_publish(self, client: str, provider: str, type_: str) -> bool:
        return f"{provider}/{type_}" in self._publish.get(client, frozenset())

    def may_subscribe(self, client: str, provider: str, type_: str) -> bool:
        return f"{provider}/{type_}" in self._subscribe.get(client, frozenset())

    def allowed_events(self, client: str) -> tuple[list[str], list[str]]:
        """The event types ``client`` may publish, and those it may subscribe to."""
        return sorted(self._publish.get(client, ())), sorted(self._subscribe.get(client, ()))

    def subscribers(self, provider: str, type_: str) -> list[str]:
        return sorted(c for c, types in self._subscribe.items() if f"{provider}/{type_}" in types)

    def __iter__(self) -> Iterator[Agency]:
        return iter(self.agencies.values())


def _callback(raw: Any, where: str) -> dict[str, Any]:
    """``callback: {url: https://…, secret: …}`` of an agency, checked."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or set(raw) != {"url", "secret"}:
        raise RegistryError(f"{where}: 'callback' needs exactly 'url' and 'secret'")
    url, secret = str(raw["url"]), str(raw["secret"])
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"{where}: callback url {url!r} is not an http(s) URL")
    if len(secret) < 16:
        raise RegistryError(f"{where}: a callback secret has at least 16 characters")
    return {"callback_url": url, "callback_secret": secret.encode()}


def _event_rights(
    raw: Any, agencies: dict[str, Agency], catalog: Catalog, source: str
) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """``events: {publish: {agency: [provider/type…]}, subscribe: {agency: [provider/type | provider/*…]}}``.

    Default deny, like services; only the provider that owns an event type may publish it.
    """
    raw = raw or {}
    if not isinstance(raw, dict) or not set(raw) <= {"publish", "subscribe"}:
        raise RegistryError(f"{source}: 'events' has 'publish' and 'subscribe' mappings only")
    out: list[dict[str, frozenset[str]]] = []
    for right in ("publish", "subscribe"):
        granted: dict[str, frozenset[str]] = {}
        table = raw.get(right) or {}
        if not isinstance(table, dict):
            raise RegistryError(f"{source}: events.{right} must map agency id to a list of event types")
        for client, items in table.items():
            if client not in agencies:
                raise RegistryError(f"{source}: events.{right} names unknown agency {client!r}")
            types: set[str] = set()
            for item in items or []:
                provider, _, type_ = str(item).partition("/")
                if type_ == "*":
                    names = [e.name for (p, _), e in catalog.events.items() if p == provider]
                elif catalog.event(provider, type_) is not None:
                    names = [f"{provider}/{type_}"]
                else:
                    raise RegistryError(f"{source}: events.{right} {client} → {item!r} names no event type")
                if right == "publish" and provider != client:
                    raise RegistryError(
                        f"{source}: {client} may not publish {item!r}: only {provider} publishes its events"
                    )
                types.update(names)
            granted[str(client)] = frozenset(types)
        out.append(granted)
    return out[0], out[1]
