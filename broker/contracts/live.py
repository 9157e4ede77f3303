"""The live registry's state: every document, its revision, and what the parts ask of it.

The registry lives in a compacted Kafka topic (``<prefix>.registry``): one
record per document, keyed ``<kind>/<id>``, whose value is the document with
its revision and the change that wrote it (a removed document has ``doc:
null``). Applying the topic's records in order gives every part the same
state; :class:`LiveRegistry` is that state. Kinds:

========  ==========================  ==========================================
kind      id                          document
========  ==========================  ==========================================
agency    ``hanoi``                   :func:`~broker.contracts.registry.agency_from_document`
key       first 16 hex of its hash    ``{agency, sha256, expires}``
service   ``bca/citizen/v2``          a ``schemas/`` document plus provider and service
event     ``bca/address_changed``     an event type's schema plus provider and type
right     ``call.hanoi.bca.citizen``  ``{kind, client, provider, service|event, version}``
access    a UUIDv7                    an access request and its decision
========  ==========================  ==========================================
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import orjson

from broker.contracts.catalog import Catalog, event_from_document, service_from_document
from broker.contracts.registry import (
    Document,
    Registry,
    agency_from_document,
    key_from_document,
    right_from_document,
    service_id,
)
from broker.errors import CatalogError, RegistryError

log = logging.getLogger(__name__)
KINDS = ("agency", "key", "service", "event", "right", "access")


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """A document as the registry holds it."""

    kind: str
    id: str
    rev: int
    doc: dict[str, Any] | None
    """None: removed (its revision lives on, so that a stale ``If-Match`` still fails)."""
    change_id: str = ""
    at: float = 0.0
    actor: str = ""

    @property
    def key(self) -> bytes:
        return f"{self.kind}/{self.id}".encode()

    def encode(self) -> bytes:
        return orjson.dumps({
            "kind": self.kind, "id": self.id, "rev": self.rev, "doc": self.doc,
            "change_id": self.change_id, "at": self.at, "actor": self.actor,
        })  # fmt: skip

    @classmethod
    def decode(cls, key: bytes | None, value: bytes | None) -> Entry:
        try:
            raw = orjson.loads(value or b"")
        except orjson.JSONDecodeError as exc:
            raise RegistryError(f"registry record {key!r} is not JSON") from exc
        if not isinstance(raw, dict) or raw.get("kind") not in KINDS or not isinstance(raw.get("id"), str):
            raise RegistryError(f"registry record {key!r} has no kind and id")
        if key != f"{raw['kind']}/{raw['id']}".encode():
            raise RegistryError(f"registry record {key!r} does not match its kind and id")
        rev, doc = raw.get("rev"), raw.get("doc")
        if not isinstance(rev, int) or rev < 1 or not (doc is None or isinstance(doc, dict)):
            raise RegistryError(f"registry record {key!r} has no revision or a document that is no object")
        return cls(kind=raw["kind"], id=raw["id"], rev=rev, doc=doc, change_id=str(raw.get("change_id", "")),
                   at=float(raw.get("at") or 0), actor=str(raw.get("actor", "")))  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One entry of the registry's change log: who did what to which document, and whether it
    was applied or refused (an attempt on another agency's documents is logged too)."""

    change_id: str
    at: float
    """Unix time, seconds."""
    actor: str
    action: str
    target: str
    outcome: str = "applied"
    detail: str = ""
    parties: tuple[str, ...] = ()
    """The agencies whose documents it concerns (each sees it in its own change log)."""

    def describe(self) -> dict[str, Any]:
        when = dt.datetime.fromtimestamp(self.at, dt.UTC).isoformat(timespec="milliseconds")
        out = {"change_id": self.change_id, "at": when, "actor": self.actor, "action": self.action,
               "target": self.target, "outcome": self.outcome}  # fmt: skip
        return {**out, "detail": self.detail} if self.detail else out

    def encode(self) -> bytes:
        return orjson.dumps({
            "change_id": self.change_id, "at": self.at, "actor": self.actor, "action": self.action,
            "target": self.target, "outcome": self.outcome, "detail": self.detail, "parties": self.parties,
        })  # fmt: skip

    @classmethod
    def decode(cls, value: bytes | None) -> Change:
        try:
            raw = orjson.loads(value or b"")
            return cls(change_id=str(raw["change_id"]), at=float(raw["at"]), actor=str(raw["actor"]),
                       action=str(raw["action"]), target=str(raw["target"]),
                       outcome=str(raw.get("outcome", "applied")),
                       detail=str(raw.get("detail", "")),
                       parties=tuple(str(p) for p in raw.get("parties") or ()))  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"change log record is not a change: {exc}") from exc


class LiveRegistry:
    """Every document of the registry, and the catalog and registry indexes built from them."""

    def __init__(self) -> None:
        self.catalog = Catalog()
        self.registry = Registry(self.catalog)
        self.entries: dict[tuple[str, str], Entry] = {}
        self.applied = 0
        """Records applied (the registry's version as this part runs it)."""

    def rev(self, kind: str, id_: str) -> int:
        entry = self.entries.get((kind, id_))
        return 0 if entry is None else entry.rev

    def doc(self, kind: str, id_: str) -> dict[str, Any] | None:
        entry = self.entries.get((kind, id_))
        return None if entry is None else entry.doc

    def of_kind(self, kind: str) -> list[Entry]:
        return [e for (k, _), e in self.entries.items() if k == kind and e.doc is not None]

    def apply(self, entry: Entry) -> None:
        """Apply one document: all of it, or (a :class:`RegistryError`) nothing."""
        doc = entry.doc
        try:
            if entry.kind == "agency":
                if doc is None:
                    self.registry.remove_agency(entry.id)
                else:
                    self.registry.put_agency(agency_from_document(doc, f"agency {entry.id}"))
            elif entry.kind == "key":
                if doc is None:
                    self.registry.remove_key(entry.id)
                else:
                    self.registry.put_key(key_from_document(doc, f"key {entry.id}"))
            elif entry.kind == "right":
                if doc is None:
                    self.registry.remove_right(entry.id)
                else:
                    right = right_from_document(doc, f"right {entry.id}")
                    if right.id != entry.id:
                        raise RegistryError(f"right {entry.id}: its document is right {right.id}")
                    self.registry.put_right(right)
            elif entry.kind == "service" and doc is not None:
                svc = service_from_document(doc, str(doc.get("provider")), str(doc.get("service")),
                                            source=f"registry service {entry.id}")  # fmt: skip
                if service_id(svc.provider, svc.service, svc.major) != entry.id:
                    raise RegistryError(f"service {entry.id}: its document is version {svc.version}")
                self.catalog.put(svc)
            elif entry.kind == "event" and doc is not None:
                ev = event_from_document(doc.get("schema"), str(doc.get("provider")), str(doc.get("event")),
                                         source=f"registry event {entry.id}")  # fmt: skip
                if ev.name != entry.id:
                    raise RegistryError(f"event {entry.id}: its document is event {ev.name}")
                self.catalog.put_event(ev)
        except CatalogError as exc:
            raise RegistryError(str(exc)) from exc
        self.entries[(entry.kind, entry.id)] = entry
        self.applied += 1

    def apply_documents(self, documents: list[Document], *, actor: str = "import") -> None:
        """Apply documents directly (a registry that is not followed from Kafka: files, tests)."""
        for kind, id_, doc in documents:
            self.apply(Entry(kind=kind, id=id_, rev=self.rev(kind, id_) + 1, doc=doc, actor=actor))

    def export(self) -> dict[str, Any]:
        """The registry in the import format, canonical (sorted), so that
        ``export(import(x)) == x`` for any ``x`` that export wrote."""
        keys: dict[str, list[Any]] = {}
        for e in sorted(self.of_kind("key"), key=lambda e: e.id):
            assert e.doc is not None
            held = e.doc["sha256"] if e.doc.get("expires") is None else {
                "sha256": e.doc["sha256"], "expires": e.doc["expires"]}  # fmt: skip
            keys.setdefault(e.doc["agency"], []).append(held)
        agencies = []
        for e in sorted(self.of_kind("agency"), key=lambda e: e.id):
            assert e.doc is not None
            agencies.append({**e.doc, **({"keys_sha256": keys[e.id]} if e.id in keys else {})})
        tables: dict[str, dict[str, list[str]]] = {"call": {}, "publish": {}, "subscribe": {}}
        for e in self.of_kind("right"):
            assert e.doc is not None
            d = e.doc
            target = f"{d['provider']}/{d.get('service') or d.get('event')}"
            if d.get("version") is not None:
                target += f"@{d['version']}"
            tables[d.get("kind", "call")].setdefault(d["client"], []).append(target)

        def tidy(table: dict[str, list[str]]) -> dict[str, list[str]]:
            return {c: sorted(t) for c, t in sorted(table.items())}

        out: dict[str, Any] = {"agencies": agencies, "rights": tidy(tables["call"])}
        if tables["publish"] or tables["subscribe"]:
            out["events"] = {"publish": tidy(tables["publish"]), "subscribe": tidy(tables["subscribe"])}
        out["services"] = [e.doc for e in sorted(self.of_kind("service"), key=lambda e: _version_order(e.id))]
        out["event_types"] = [e.doc for e in sorted(self.of_kind("event"), key=lambda e: e.id)]
        requests = [e.doc for e in sorted(self.of_kind("access"), key=lambda e: e.id)]
        if requests:
            out["access_requests"] = requests
        return out


def _version_order(sid: str) -> tuple[str, str, int]:
    provider, service, major = sid.split("/")
    return provider, service, int(major[1:])
