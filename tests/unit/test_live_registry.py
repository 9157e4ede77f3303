"""The live registry's state without Kafka: documents applied in order, export, compatibility checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.contracts.catalog import Catalog
from broker.contracts.compat import breaking_changes
from broker.contracts.live import Change, Entry, LiveRegistry
from broker.contracts.registry import documents_from_import, hash_key, read_yaml
from broker.errors import RegistryError

ROOT = Path(__file__).resolve().parents[2]


def demo() -> LiveRegistry:
    live = LiveRegistry()
    raw = read_yaml(ROOT / "deploy" / "registry.yaml")
    live.apply_documents(documents_from_import(raw, Catalog.load(ROOT / "schemas")))
    return live


def test_the_demo_registry_as_documents_answers_as_the_file_did() -> None:
    live = demo()
    reg = live.registry
    hanoi = reg.authenticate("demo-hanoi")
    assert hanoi is not None
    assert hanoi.rate_limit == 300
    assert reg.allowed("hanoi", "bca", "citizen", 1)
    assert reg.allowed("dvcqg", "tnmt", "land_parcel", 1)  # tnmt/*
    assert not reg.allowed("vcb", "bca", "household", 1)
    assert reg.may_subscribe("hanoi", "bca", "address_changed")
    assert reg.may_publish("bca", "bca", "address_changed")
    assert not reg.may_publish("hanoi", "bca", "address_changed")
    assert reg.subscribers("bca", "address_changed") == ["bhxh", "danang", "hanoi"]
    ops = reg.authenticate("demo-ops")
    assert ops is not None
    assert ops.operator
    assert len(live.catalog) == 14
    assert len(live.catalog.events) == 3


def test_export_is_canonical_so_import_of_an_export_exports_the_same() -> None:
    first = demo().export()
    again = LiveRegistry()
    again.apply_documents(documents_from_import(first, None))
    assert again.export() == first


def test_a_removed_key_or_right_stops_working_and_overlapping_rights_count() -> None:
    live = demo()
    kid = next(k for k, v in live.registry.keys.items() if v.agency == "vcb")
    live.apply(Entry(kind="key", id=kid, rev=2, doc=None))
    assert live.registry.authenticate("demo-vcb") is None
    # dvcqg holds bca/*; a second, narrower right to bca/citizen and its removal leave bca/* in force
    doc = {
        "id": "call.dvcqg.bca.citizen",
        "kind": "call",
        "client": "dvcqg",
        "provider": "bca",
        "service": "citizen",
    }
    live.apply(Entry(kind="right", id=doc["id"], rev=1, doc=doc))
    live.apply(Entry(kind="right", id=doc["id"], rev=2, doc=None))
    assert live.registry.allowed("dvcqg", "bca", "citizen", 1)
    live.apply(Entry(kind="right", id="call.dvcqg.bca.*", rev=2, doc=None))
    assert not live.registry.allowed("dvcqg", "bca", "citizen", 1)


def test_a_pinned_right_grants_its_version_only() -> None:
    live = demo()
    doc: dict[str, Any] = {"id": "call.vcb.bca.citizen.v2", "kind": "call", "client": "vcb",
                           "provider": "bca", "service": "citizen", "version": 2}  # fmt: skip
    live.apply(Entry(kind="right", id="call.vcb.bca.citizen.v2", rev=1, doc=doc))
    assert live.registry.allowed("vcb", "bca", "citizen", 2)
    assert not live.registry.allowed("vcb", "bca", "citizen", 1)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"agency/x", b"{not json"),
        (b"agency/x", b'{"kind": "agency", "id": "y", "rev": 1, "doc": {}}'),
        (b"agency/x", b'{"kind": "agency", "id": "x", "rev": 0, "doc": {}}'),
        (b"agency/x", b'{"kind": "agency", "id": "x", "rev": 1, "doc": {"id": "X Y"}}'),
        (b"key/k", b'{"kind": "key", "id": "k", "rev": 1, "doc": {"agency": "a", "sha256": "zz"}}'),
        (b"service/p/s/v1", b'{"kind": "service", "id": "p/s/v1", "rev": 1, "doc": {"provider": "p"}}'),
    ],
)
def test_a_record_that_does_not_decode_changes_nothing(key: bytes, value: bytes) -> None:
    live = demo()
    before = live.export()
    with pytest.raises(RegistryError):
        live.apply(Entry.decode(key, value))
    assert live.export() == before


def test_a_change_round_trips_and_names_its_parties() -> None:
    change = Change(change_id="c1", at=1.5, actor="ops", action="agency.update", target="agency/bob",
                    parties=("bob",))  # fmt: skip
    assert Change.decode(change.encode()) == change
    assert change.describe()["at"] == "1970-01-01T00:00:01.500+00:00"


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or []}


@pytest.mark.parametrize(
    ("old_req", "new_req", "old_resp", "new_resp", "broken"),
    [
        (_obj({"a": {"type": "string"}}, ["a"]), _obj({"a": {"type": "string"}, "b": {}}, ["a"]),
         _obj({"x": {"type": "string"}}), _obj({"x": {"type": "string"}, "y": {}}), []),
        (_obj({"a": {}}), _obj({"a": {}, "b": {}}, ["b"]), {}, {}, ["request /b: newly required"]),
        (_obj({"a": {"type": ["string", "null"]}}), _obj({"a": {"type": "string"}}), {}, {},
         ["request /a: type narrowed from ['null', 'string'] to ['string']"]),
        (_obj({"a": {"enum": ["x", "y"]}}), _obj({"a": {"enum": ["x"]}}), {}, {},
         ["request /a: enum narrowed"]),
        ({}, {}, _obj({"x": {"type": "string"}}, ["x"]), _obj({}),
         ["response /x: no longer required (callers may not get it)", "response /x: removed"]),
        ({}, {}, _obj({"o": _obj({"n": {"type": "integer"}})}), _obj({"o": _obj({"n": {"type": "string"}})}),
         ["response /o/n: type changed from ['integer'] to ['string']"]),
        ({}, {}, _obj({"s": {"enum": ["a"]}}), _obj({"s": {"enum": ["a", "b"]}}),
         ["response /s: enum widened (callers may get values they do not know)"]),
    ],
)  # fmt: skip
def test_breaking_changes_are_named_by_path(
    old_req: Any, new_req: Any, old_resp: Any, new_resp: Any, broken: list[str]
) -> None:
    assert breaking_changes(old_req, old_resp, new_req, new_resp) == broken


def test_a_key_held_twice_is_refused_on_import() -> None:
    raw = {
        "agencies": [{"id": "a", "keys_sha256": [hash_key("k")]}, {"id": "b", "keys_sha256": [hash_key("k")]}]
    }
    with pytest.raises(RegistryError, match="a key of 'b' is held by 'a'"):
        documents_from_import(raw, Catalog())
