"""Service contracts from ``schemas/<provider>/<service>.json``, validators compiled once.

A contract holds the title and description, mode, version, timeout, the
JSON Schema 2020-12 of the request and of the response, and example requests.
Loading fails with a :class:`CatalogError` naming the file and the fault when
a schema does not compile or an example does not pass its own schema.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson

from broker.errors import CatalogError
from broker.model.documents import MAX_ASYNC_TTL_MS

DEFAULT_ASYNC_TTL_S = 24 * 3600
MAX_ASYNC_TTL_S = MAX_ASYNC_TTL_MS // 1000
"""An async exchange's wait is bounded: its documents outlive it in the exchanges topic."""
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def valid_name(name: str) -> bool:
    """Provider and service names: lowercase letters, digits, '-' and '_'."""
    return bool(name) and set(name) <= _NAME_CHARS


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaViolation:
    """One way an instance fails a schema."""

    path: str
    """JSON pointer into the instance."""
    schema_path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "schema_path": self.schema_path, "message": self.message}


ECHO_LIMIT = 200
"""Most characters of a caller's value (or path) a violation echoes back: an answer stays small."""


def _short(text: str) -> str:
    return text if len(text) <= ECHO_LIMIT else f"{text[:ECHO_LIMIT]}… ({len(text)} characters)"


def _pointer(parts: Any) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class Contract:
    """A compiled JSON Schema: checks instances, reports violations with paths."""

    __slots__ = ("_validator", "schema")

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = dict(schema)
        self._validator = jsonschema_rs.Draft202012Validator(self.schema)

    def is_valid(self, instance: Any) -> bool:
        return bool(self._validator.is_valid(instance))

    def violations(self, instance: Any, limit: int = 20) -> list[SchemaViolation]:
        found = []
        for i, err in enumerate(self._validator.iter_errors(instance)):
            if i >= limit:
                break
            found.append(
                SchemaViolation(
                    path=_short(_pointer(err.instance_path)),
                    schema_path=_short(_pointer(err.schema_path)),
                    message=_short(err.message),
                )
            )
        return found


class Effects(enum.StrEnum):
    """What a service does to its provider's data; it decides how it is delivered."""

    READ = "read"
    """A lookup: served at least once (answering a redelivered request twice harms nobody)."""
    WRITE = "write"
    """Changes the provider's data: served exactly once, in a Kafka transaction."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """One service version: the data contract both sides are held to."""

    provider: str
    service: str
    title: str
    description: str
    version: str
    mode: str
    timeout_ms: int
    effects: Effects = Effects.READ
    """``read`` (a lookup: served at least once) or ``write`` (side effects: exactly once)."""
    async_ttl_s: int = DEFAULT_ASYNC_TTL_S
    """How long an async exchange (``Prefer: respond-async``) may wait for its provider."""
    request: Contract = field(repr=False)
    response: Contract = field(repr=False)
    examples: tuple[Any, ...]
    source: Path

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.service}"

    def describe(self) -> dict[str, Any]:
        """The public shape of ``/v1/services`` entries."""
        return {
            "provider": self.provider,
            "service": self.service,
            "title": self.title,
            "description": self.description,
            "version": self.version,
            "mode": self.mode,
            "timeout_ms": self.timeout_ms,
            "effects": self.effects.value,
            "async_ttl_s": self.async_ttl_s,
            "request": self.request.schema,
            "response": self.response.schema,
            "examples": list(self.examples),
        }


def load_service(path: Path, provider: str, service: str) -> Service:
    """Load and check one contract file."""
    try:
        raw = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CatalogError(f"{path}: a contract must be a JSON object")
    for key in ("provider", "service"):
        if key in raw and raw[key] != {"provider": provider, "service": service}[key]:
            raise CatalogError(f"{path}: {key} {raw[key]!r} does not match the file's location")
    missing = [k for k in ("title", "request", "response", "timeout_ms") if k not in raw]
    if missing:
        raise CatalogError(f"{path}: missing {', '.join(missing)}")
    timeout_ms = raw["timeout_ms"]
    if not isinstance(timeout_ms, int) or not 1 <= timeout_ms <= 300_000:
        raise CatalogError(f"{path}: timeout_ms must be an integer from 1 to 300000")
    async_ttl_s = raw.get("async_ttl_s", DEFAULT_ASYNC_TTL_S)
    if not isinstance(async_ttl_s, int) or not 1 <= async_ttl_s <= MAX_ASYNC_TTL_S:
        raise CatalogError(f"{path}: async_ttl_s must be an integer from 1 to {MAX_ASYNC_TTL_S}")
    try:
        effects = Effects(raw.get("effects", "read"))
    except ValueError as exc:
        raise CatalogError(f"{path}: effects must be 'read' or 'write'") from exc
    contracts = {}
    for part in ("request", "response"):
        try:
            contracts[part] = Contract(raw[part])
        except (jsonschema_rs.ValidationError, ValueError, TypeError) as exc:
            raise CatalogError(f"{path}: the {part} schema does not compile: {exc}") from exc
    examples = raw.get("examples", [])
    if not isinstance(examples, list):
        raise CatalogError(f"{path}: examples must be a list of request bodies")
    for i, example in enumerate(examples):
        bad = contracts["request"].violations(example)
        if bad:
            raise CatalogError(
                f"{path}: example {i} fails its own request schema: "
                + "; ".join(f"{v.path}: {v.message}" for v in bad)
            )
    return Service(
        provider=provider,
        service=service,
        title=str(raw["title"]),
        description=str(raw.get("description", "")),
        version=str(raw.get("version", "1")),
        mode=str(raw.get("mode", "sync")),
        timeout_ms=timeout_ms,
        effects=effects,
        async_ttl_s=async_ttl_s,
        request=contracts["request"],
        response=contracts["response"],
        examples=tuple(examples),
        source=path,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class EventType:
    """A data-change event a provider publishes: ``schemas/<provider>/events/<type>.json``.

    The file is the JSON Schema (2020-12) of the event's data, with ``title``,
    ``description``, ``examples`` and ``x-ndxp-key``: the property whose value
    keys the event in Kafka, so that events of one subject (a citizen, a
    business) reach every subscriber in the order they were published.
    """

    provider: str
    type: str
    title: str
    description: str
    key: str
    schema: Contract = field(repr=False)
    examples: tuple[Any, ...]
    source: Path

    @property
    def name(self) -> str:
        return f"{self.provider}/{self.type}"

    def describe(self) -> dict[str, Any]:
        """The public shape of ``/v1/events`` entries."""
        return {
            "provider": self.provider,
            "type": self.type,
            "title": self.title,
            "description": self.description,
            "key": self.key,
            "schema": self.schema.schema,
            "examples": list(self.examples),
        }


def load_event(path: Path, provider: str, type_: str) -> EventType:
    """Load and check one event type: its schema compiles, its key is a required string, its examples pass."""
    try:
        raw = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or not raw.get("title") or not isinstance(raw.get("examples"), list):
        raise CatalogError(f"{path}: an event type is a JSON Schema with a title and examples")
    key = raw.get("x-ndxp-key")
    if not isinstance(key, str) or key not in raw.get("required", []):
        raise CatalogError(f"{path}: x-ndxp-key must name a required property")
    try:
        contract = Contract(raw)
    except (jsonschema_rs.ValidationError, ValueError, TypeError) as exc:
        raise CatalogError(f"{path}: the schema does not compile: {exc}") from exc
    for i, example in enumerate(raw["examples"]):
        bad = contract.violations(example)
        if bad:
            raise CatalogError(f"{path}: example {i} fails its own schema: " + "; ".join(
                f"{v.path}: {v.message}" for v in bad))  # fmt: skip
    return EventType(
        provider=provider,
        type=type_,
        title=str(raw["title"]),
        description=str(raw.get("description", "")),
        key=key,
        schema=contract,
        examples=tuple(raw["examples"]),
        source=path,
    )


class Catalog:
    """Every service contract, by ``(provider, service)``, and every event type."""

    def __init__(
        self,
        services: Mapping[tuple[str, str], Service],
        events: Mapping[tuple[str, str], EventType] | None = None,
    ) -> None:
        self._services = dict(sorted(services.items()))
        self.events: dict[tuple[str, str], EventType] = dict(sorted((events or {}).items()))
        """Event types by ``(provider, type)``."""

    @classmethod
    def load(cls, directory: Path) -> Catalog:
        if not directory.is_dir():
            raise CatalogError(f"{directory}: schemas directory not found")
        services: dict[tuple[str, str], Service] = {}
        for path in sorted(directory.glob("*/*.json")):
            provider, service = path.parent.name, path.stem
            if not (valid_name(provider) and valid_name(service)):
                raise CatalogError(f"{path}: provider and service names must match [a-z0-9_-]+")
            services[(provider, service)] = load_service(path, provider, service)
        events: dict[tuple[str, str], EventType] = {}
        for path in sorted(directory.glob("*/events/*.json")):
            provider, type_ = path.parent.parent.name, path.stem
            if not (valid_name(provider) and valid_name(type_)):
                raise CatalogError(f"{path}: provider and event type names must match [a-z0-9_-]+")
            events[(provider, type_)] = load_event(path, provider, type_)
        return cls(services, events)

    def event(self, provider: str, type_: str) -> EventType | None:
        return self.events.get((provider, type_))

    def get(self, provider: str, service: str) -> Service | None:
        return self._services.get((provider, service))

    def __iter__(self) -> Iterator[Service]:
        return iter(self._services.values())

    def __len__(self) -> int:
        return len(self._services)

    def providers(self) -> list[str]:
        return sorted({p for p, _ in self._services})

    def of_provider(self, provider: str) -> list[Service]:
        return [s for (p, _), s in self._services.items() if p == provider]
