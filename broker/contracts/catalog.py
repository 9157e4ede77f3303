"""Service contracts from ``schemas/<provider>/<service>.json``, validators compiled once.

A contract holds the title and description, mode, version, timeout, the
JSON Schema 2020-12 of the request and of the response, and example requests.
Loading fails with a :class:`CatalogError` naming the file and the fault when
a schema does not compile or an example does not pass its own schema.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jmespath
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


class VersionState(enum.StrEnum):
    """Where a service version is in its life."""

    ACTIVE = "active"
    DEPRECATED = "deprecated"
    """Still served, with ``Deprecation`` (and ``Sunset``) headers: callers should move on."""
    RETIRED = "retired"
    """No longer served."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """One service version: the data contract both sides are held to."""

    provider: str
    service: str
    title: str
    description: str
    version: str
    """``MAJOR`` or ``MAJOR.MINOR``: callers pin the major (``…/v{MAJOR}``)."""
    mode: str
    timeout_ms: int
    major: int = 1
    minor: int = 0
    state: VersionState = VersionState.ACTIVE
    sunset: dt.date | None = None
    """When a deprecated version stops being served (the ``Sunset`` header)."""
    default: bool = False
    """The provider marks this version the one unpinned calls get (else: the newest active major)."""
    binding: dict[str, Any] | None = None
    """How a generic adapter calls the provider's own backend (DESIGN §4), if it is bound."""
    effects: Effects = Effects.READ
    """``read`` (a lookup: served at least once) or ``write`` (side effects: exactly once)."""
    async_ttl_s: int = DEFAULT_ASYNC_TTL_S
    """How long an async exchange (``Prefer: respond-async``) may wait for its provider."""
    request: Contract = field(repr=False)
    response: Contract = field(repr=False)
    examples: tuple[Any, ...]
    source: object
    """Where it came from: a file's path, or the registry."""
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The document as published (what ``registry export`` writes back)."""
    subject: tuple[str, ...] = ()
    """``x-ndxp-subject``: the request fields naming the person the data is about (the data tracker)."""

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
            "state": self.state.value,
            **({"sunset": self.sunset.isoformat()} if self.sunset else {}),
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
    return service_from_document(_read_json(path), provider, service, source=path)


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"{path}: not valid JSON: {exc}") from exc


def parse_version(raw: Any, where: object) -> tuple[int, int]:
    """A service version: ``MAJOR`` or ``MAJOR.MINOR`` (``"1"``, ``"2.3"``); callers pin the major."""
    text = str(raw)
    major, _, minor = text.partition(".")
    if not major.isdigit() or (minor and not minor.isdigit()) or int(major) < 1 or len(text) > 16:
        raise CatalogError(f"{where}: version must be MAJOR or MAJOR.MINOR (like 2 or 1.3), not {text!r}")
    return int(major), int(minor or 0)


SERVICE_FIELDS = frozenset({
    "provider", "service", "title", "description", "version", "mode", "timeout_ms", "effects",
    "async_ttl_s", "request", "response", "examples", "state", "sunset", "default", "binding",
    "x-ndxp-subject",
})  # fmt: skip
"""The fields of a service document (a ``schemas/`` file, or what a provider publishes)."""


def service_from_document(raw: Any, provider: str, service: str, *, source: object) -> Service:
    """Check one service version's document (a ``schemas/`` file or a published one)."""
    where = source
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: a contract must be a JSON object")
    for key in ("provider", "service"):
        if key in raw and raw[key] != {"provider": provider, "service": service}[key]:
            raise CatalogError(f"{where}: {key} {raw[key]!r} does not match the file's location")
    unknown = sorted(set(raw) - SERVICE_FIELDS)
    if unknown:
        raise CatalogError(f"{where}: unknown field {unknown[0]!r}")
    missing = [k for k in ("title", "request", "response", "timeout_ms") if k not in raw]
    if missing:
        raise CatalogError(f"{where}: missing {', '.join(missing)}")
    timeout_ms = raw["timeout_ms"]
    if not isinstance(timeout_ms, int) or not 1 <= timeout_ms <= 300_000:
        raise CatalogError(f"{where}: timeout_ms must be an integer from 1 to 300000")
    async_ttl_s = raw.get("async_ttl_s", DEFAULT_ASYNC_TTL_S)
    if not isinstance(async_ttl_s, int) or not 1 <= async_ttl_s <= MAX_ASYNC_TTL_S:
        raise CatalogError(f"{where}: async_ttl_s must be an integer from 1 to {MAX_ASYNC_TTL_S}")
    try:
        effects = Effects(raw.get("effects", "read"))
    except ValueError as exc:
        raise CatalogError(f"{where}: effects must be 'read' or 'write'") from exc
    try:
        state = VersionState(raw.get("state", "active"))
    except ValueError as exc:
        raise CatalogError(f"{where}: state must be 'active', 'deprecated' or 'retired'") from exc
    sunset = raw.get("sunset")
    if sunset is not None:
        try:
            sunset = dt.date.fromisoformat(str(sunset))
        except ValueError as exc:
            raise CatalogError(f"{where}: sunset must be a date (YYYY-MM-DD)") from exc
    if not isinstance(raw.get("default", False), bool):
        raise CatalogError(f"{where}: default must be true or false")
    binding = raw.get("binding")
    major, minor = parse_version(raw.get("version", "1"), where)
    contracts = {}
    for part in ("request", "response"):
        try:
            if not isinstance(raw[part], dict):
                raise TypeError("a JSON Schema here is an object")
            contracts[part] = Contract(raw[part])
        except (jsonschema_rs.ValidationError, ValueError, TypeError) as exc:
            raise CatalogError(f"{where}: the {part} schema does not compile: {exc}") from exc
    if binding is not None:
        check_binding(binding, where, contracts["response"])
    subject = _subject_fields(raw.get("x-ndxp-subject", []), raw["request"], where)
    examples = raw.get("examples", [])
    if not isinstance(examples, list):
        raise CatalogError(f"{where}: examples must be a list of request bodies")
    for i, example in enumerate(examples):
        bad = contracts["request"].violations(example)
        if bad:
            raise CatalogError(
                f"{where}: example {i} fails its own request schema: "
                + "; ".join(f"{v.path}: {v.message}" for v in bad)
            )
    return Service(
        provider=provider,
        service=service,
        title=str(raw["title"]),
        description=str(raw.get("description", "")),
        version=str(raw.get("version", "1")),
        major=major,
        minor=minor,
        state=state,
        sunset=sunset,
        default=bool(raw.get("default", False)),
        binding=binding,
        mode=str(raw.get("mode", "sync")),
        timeout_ms=timeout_ms,
        effects=effects,
        async_ttl_s=async_ttl_s,
        request=contracts["request"],
        response=contracts["response"],
        examples=tuple(examples),
        source=source,
        document={k: v for k, v in raw.items() if k not in ("provider", "service")},
        subject=subject,
    )


def _subject_fields(given: Any, request: dict[str, Any], where: object) -> tuple[str, ...]:
    """``x-ndxp-subject``: up to 8 names of the request's top-level string properties."""
    props = request.get("properties", {}) if isinstance(request, dict) else {}
    if not isinstance(given, list) or len(given) > 8 or not all(isinstance(f, str) for f in given):
        raise CatalogError(f"{where}: x-ndxp-subject must be a list of up to 8 request field names")
    for name in given:
        prop = props.get(name) if isinstance(props, dict) else None
        if not isinstance(prop, dict) or prop.get("type") != "string":
            raise CatalogError(
                f"{where}: x-ndxp-subject names {name!r}, not a string property of the request"
            )
    return tuple(given)


def subject_of(svc: Service, doc: Any) -> str | None:
    """The value identifying the person a request is about: its first ``x-ndxp-subject`` field given."""
    if not svc.subject or not isinstance(doc, dict):
        return None
    for name in svc.subject:
        value = doc.get(name)
        if isinstance(value, str) and value:
            return value
    return None


_REF = r"\$\{(env|secret):[A-Za-z_][A-Za-z0-9_]{0,63}\}"
REFERENCE = re.compile(r"\$\{(env|secret):([A-Za-z_][A-Za-z0-9_]{0,63})\}")
"""``${env:NAME}`` and ``${secret:NAME}`` in a binding: a value the adapter that serves the binding
takes from its own environment (never the registry), from the provider's own namespace."""
_TEXT_WITH_REFS = f"^([^$]|{_REF})*$"
_TIMEOUT = {"type": "integer", "minimum": 1, "maximum": 300000}

_BINDING_SCHEMA = Contract({
    "type": "object",
    "additionalProperties": False,
    "required": ["response", "example"],
    "properties": {
        "rest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["method", "url"],
            "properties": {
                "method": {"enum": ["GET", "POST", "PUT"]},
                "url": {"type": "string", "maxLength": 2048,
                        "pattern": f"^(https?://|{_REF})([^$]|{_REF})*$"},
                "headers": {"type": "object", "maxProperties": 32,
                            "propertyNames": {"pattern": "^[A-Za-z0-9-]{1,64}$"},
                            "additionalProperties": {"type": "string", "maxLength": 4096,
                                                     "pattern": _TEXT_WITH_REFS}},
                "timeout_ms": _TIMEOUT,
                "not_found": {"type": "array", "items": {"type": "integer", "minimum": 400, "maximum": 599}},
            },
        },
        "soap": {
            "type": "object",
            "additionalProperties": False,
            "required": ["wsdl", "operation"],
            "properties": {
                "wsdl": {"type": "string", "maxLength": 2048,
                         "pattern": f"^(https?://|{_REF})([^$]|{_REF})*$"},
                "operation": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.-]{0,255}$"},
                "timeout_ms": _TIMEOUT,
                "not_found": {"type": "array", "items": {"type": "string", "maxLength": 256},
                              "description": "SOAP fault codes that mean the provider's not-found"},
            },
        },
        "request": {"type": "string", "maxLength": 8192},
        "response": {"type": "string", "maxLength": 8192},
        "example": {"description": "The backend's answer to the service's first example request (for "
                                   "SOAP: as zeep returns it, a JSON object): the mapping is checked on it"},
        "not_found": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"code": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
                           "detail": {"type": "string", "maxLength": 512}},
        },
    },
    "oneOf": [{"required": ["rest"]}, {"required": ["soap"]}],
})  # fmt: skip
"""The shape of a service's ``binding`` (DESIGN §4): how a generic adapter calls the provider's backend."""


def check_binding(binding: Any, where: object, response: Contract | None = None) -> None:
    """A binding of the right shape (its fields named when not), whose JMESPath expressions compile
    and whose ``response`` mapping turns the backend's ``example`` answer into one ``response`` (the
    service's contract) accepts; or a CatalogError naming the path."""
    bad = _BINDING_SCHEMA.violations(binding, limit=1)
    if bad:
        raise CatalogError(f"{where}: binding{bad[0].path if bad[0].path != '/' else ''}: {bad[0].message}")
    compiled = {}
    for part in ("request", "response"):
        if part in binding:
            try:
                compiled[part] = jmespath.compile(binding[part])
            except jmespath.exceptions.JMESPathError as exc:
                raise CatalogError(f"{where}: binding/{part}: not a JMESPath expression: {exc}") from exc
    if response is not None:
        mapped = compiled["response"].search(binding["example"])
        wrong = response.violations(mapped, limit=3)
        if wrong:
            raise CatalogError(
                f"{where}: binding/response: mapped from the backend's example answer, the response "
                "fails its contract: " + "; ".join(f"{v.path}: {v.message}" for v in wrong)
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
    source: object

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
    """Load and check one event type file."""
    return event_from_document(_read_json(path), provider, type_, source=path)


def event_from_document(raw: Any, provider: str, type_: str, *, source: object) -> EventType:
    """Check an event type: its schema compiles, its key is a required string, its examples pass."""
    path = source
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
    """Every service version, by ``(provider, service)`` and major, and every event type.

    The live registry changes it in place (:meth:`put`, :meth:`put_event`): readers in the same
    event loop see one whole change or none, never half of one.
    """

    def __init__(
        self,
        services: Mapping[tuple[str, str], Service] | Iterable[Service] = (),
        events: Mapping[tuple[str, str], EventType] | None = None,
    ) -> None:
        self._versions: dict[tuple[str, str], dict[int, Service]] = {}
        self._default: dict[tuple[str, str], Service] = {}
        self._subjects: list[Contract] | None = None
        for svc in services.values() if isinstance(services, Mapping) else services:
            self.put(svc)
        self.events: dict[tuple[str, str], EventType] = dict(sorted((events or {}).items()))
        """Event types by ``(provider, type)``."""

    @classmethod
    def load(cls, directory: Path) -> Catalog:
        if not directory.is_dir():
            raise CatalogError(f"{directory}: schemas directory not found")
        services: list[Service] = []
        for path in sorted(directory.glob("*/*.json")):
            provider, service = path.parent.name, path.stem
            if not (valid_name(provider) and valid_name(service)):
                raise CatalogError(f"{path}: provider and service names must match [a-z0-9_-]+")
            services.append(load_service(path, provider, service))
        events: dict[tuple[str, str], EventType] = {}
        for path in sorted(directory.glob("*/events/*.json")):
            provider, type_ = path.parent.parent.name, path.stem
            if not (valid_name(provider) and valid_name(type_)):
                raise CatalogError(f"{path}: provider and event type names must match [a-z0-9_-]+")
            events[(provider, type_)] = load_event(path, provider, type_)
        return cls(services, events)

    def put(self, svc: Service) -> None:
        """Add or replace one service version."""
        name = (svc.provider, svc.service)
        self._subjects = None
        versions = self._versions.setdefault(name, {})
        versions[svc.major] = svc
        self._versions[name] = dict(sorted(versions.items()))
        if len(self._versions) > 1 and list(self._versions)[-1] == name and len(versions) == 1:
            self._versions = dict(sorted(self._versions.items()))
        self._choose_default(name)

    def put_event(self, ev: EventType) -> None:
        self.events[(ev.provider, ev.type)] = ev
        self.events = dict(sorted(self.events.items()))

    def _choose_default(self, name: tuple[str, str]) -> None:
        """The version unpinned calls get: the one marked default, else the newest active, else
        the newest deprecated; a service with only retired versions has none."""
        served = [s for s in self._versions.get(name, {}).values() if s.state is not VersionState.RETIRED]
        marked = [s for s in served if s.default]
        active = [s for s in served if s.state is VersionState.ACTIVE]
        choice = marked or active or served
        if not choice:
            self._default.pop(name, None)
        else:
            self._default[name] = choice[-1]
            self._default = dict(sorted(self._default.items()))

    def event(self, provider: str, type_: str) -> EventType | None:
        return self.events.get((provider, type_))

    def get(self, provider: str, service: str, major: int | None = None) -> Service | None:
        """The default version of a service, or version ``major`` (None if retired or unknown)."""
        if major is None:
            return self._default.get((provider, service))
        svc = self._versions.get((provider, service), {}).get(major)
        return None if svc is None or svc.state is VersionState.RETIRED else svc

    def version(self, provider: str, service: str, major: int) -> Service | None:
        """Version ``major`` whatever its state (retired included)."""
        return self._versions.get((provider, service), {}).get(major)

    def subject_schemas(self) -> list[Contract]:
        """The distinct schemas of every contract's subject fields (``x-ndxp-subject``), one of which a
        data-tracker identifier must satisfy; compiled once per change of the catalog."""
        if self._subjects is None:
            seen: dict[bytes, Contract] = {}
            for svc in self.versions():
                props = svc.document.get("request", {}).get("properties", {})
                for name in svc.subject:
                    raw = orjson.dumps(props.get(name, {}), option=orjson.OPT_SORT_KEYS)
                    if raw not in seen:
                        seen[raw] = Contract(orjson.loads(raw))
            self._subjects = list(seen.values())
        return self._subjects

    def versions(self, provider: str | None = None) -> list[Service]:
        """Every version of every service (of ``provider``), retired included."""
        return [s for (p, _), vs in self._versions.items() if provider in (None, p) for s in vs.values()]

    def __iter__(self) -> Iterator[Service]:
        """The default version of every service that is served."""
        return iter(list(self._default.values()))

    def __len__(self) -> int:
        return len(self._default)

    def providers(self) -> list[str]:
        return sorted({p for p, _ in self._versions})

    def of_provider(self, provider: str) -> list[Service]:
        return [s for (p, _), s in self._default.items() if p == provider]

    def names(self) -> list[tuple[str, str]]:
        """Every ``(provider, service)`` with a version, retired ones included (their topics stay)."""
        return list(self._versions)
