"""Registry and catalog checks at start-up, without Kafka."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker.contracts.catalog import Catalog
from broker.contracts.registry import Agency, Registry, hash_key
from broker.errors import CatalogError, RateLimited, RegistryError
from broker.gateway.limits import Limits
from broker.settings import Settings
from tests.fixtures import write_contracts, write_registry


def test_demo_catalog_and_registry_load_and_demo_keys_work() -> None:
    settings = Settings()
    catalog = Catalog.load(settings.schemas_dir)
    registry = Registry.load(settings.registry_path, catalog)
    assert len(catalog) >= 1
    for service in catalog:
        assert service.examples, f"{service.key} has no example"
    clients = [a for a in registry if registry.allowed_services(a.id)]
    assert clients
    for agency in clients:
        assert registry.authenticate(f"demo-{agency.id}") == agency


def test_load_test_limits_raise_every_demo_agencys_rate_and_change_nothing_else(tmp_path: Path) -> None:
    from broker.dev.platform import load_test_registry

    settings = Settings()
    catalog = Catalog.load(settings.schemas_dir)
    demo = Registry.load(settings.registry_path, catalog)
    raised = Registry.load(load_test_registry(settings.registry_path, tmp_path / "r.yaml"), catalog)
    assert [a.id for a in raised] == [a.id for a in demo]
    for before in demo:
        after = raised.agencies[before.id]
        assert after.rate_limit == (before.rate_limit or settings.default_rate_limit) * 1000, before.id
        assert registry_rights(raised, after.id) == registry_rights(demo, before.id)
    assert demo.agencies["vcb"].rate_limit == 100  # the limit a plain Locust run meets: 429s


def registry_rights(registry: Registry, agency: str) -> set[str]:
    return {str(s) for s in registry.allowed_services(agency)}


def test_rights_are_default_deny(tmp_path: Path) -> None:
    catalog = Catalog.load(write_contracts(tmp_path, "prov"))
    registry = Registry.load(write_registry(tmp_path, "prov"), catalog)
    assert registry.allowed("alice", "prov", "echo")
    assert not registry.allowed("bob", "prov", "echo")
    assert not registry.allowed("prov", "prov", "echo")
    assert registry.authenticate("key-bob") is not None
    assert registry.authenticate("key-nobody") is None


@pytest.mark.parametrize(
    ("rights", "message"),
    [
        ({"mallory": ["prov/echo"]}, "unknown agency 'mallory'"),
        ({"alice": ["nowhere/echo"]}, "unknown agency 'nowhere'"),
        ({"alice": ["prov/missing"]}, "unknown service"),
    ],
)
def test_a_right_naming_something_unknown_stops_start_up(
    tmp_path: Path, rights: dict[str, list[str]], message: str
) -> None:
    catalog = Catalog.load(write_contracts(tmp_path, "prov"))
    raw = {
        "agencies": [{"id": "prov"}, {"id": "alice", "keys_sha256": [hash_key("k")]}],
        "rights": rights,
    }
    with pytest.raises(RegistryError, match=message):
        Registry.from_dict(raw, catalog, source="reg.yaml")


def _contract(tmp_path: Path, **overrides: object) -> Path:
    schemas = write_contracts(tmp_path, "prov")
    path = schemas / "prov" / "echo.json"
    doc = json.loads(path.read_text())
    doc.update(overrides)
    path.write_text(json.dumps(doc))
    return schemas


def test_a_schema_that_does_not_compile_names_the_file(tmp_path: Path) -> None:
    schemas = _contract(tmp_path, request={"type": 12})
    with pytest.raises(CatalogError, match=r"prov/echo\.json: the request schema does not compile"):
        Catalog.load(schemas)


def test_an_example_failing_its_own_schema_names_the_file(tmp_path: Path) -> None:
    schemas = _contract(tmp_path, examples=[{"msg": 1}])
    with pytest.raises(CatalogError, match=r"echo\.json: example 0 fails its own request schema"):
        Catalog.load(schemas)


def test_rate_limit_admits_the_burst_then_says_when_to_retry() -> None:
    limits = Limits(default_rate=1000, max_in_flight=10)
    agency = Agency(id="a", code="a", name="a", rate_limit=2)
    for _ in range(2):
        with limits.admit(agency):
            pass
    with pytest.raises(RateLimited) as info, limits.admit(agency):
        pass
    assert info.value.retry_after is not None
    assert 0 < info.value.retry_after <= 0.5
    assert limits.total_in_flight == 0


def test_a_registry_change_resets_only_the_changed_agencys_rate() -> None:
    limits = Limits(default_rate=1000, max_in_flight=10)
    a = Agency(id="a", code="a", name="a", rate_limit=1)
    b = Agency(id="b", code="b", name="b", rate_limit=1)
    for agency in (a, b):
        with limits.admit(agency):
            pass
    limits.reset_rates(["a"])  # a's document changed (its rate limit, say); b's did not
    with limits.admit(a):
        pass
    with pytest.raises(RateLimited), limits.admit(b):
        pass


def test_keys_rotate_with_an_expiry_date_or_time(tmp_path: Path) -> None:
    import datetime as dt

    catalog = Catalog.load(write_contracts(tmp_path, "prov"))
    today = dt.datetime.now(dt.UTC).date()
    raw: dict[str, Any] = {
        "agencies": [
            {"id": "prov", "keys_sha256": []},
            {"id": "alice", "keys_sha256": [
                {"sha256": hash_key("old"), "expires": (today - dt.timedelta(days=1)).isoformat()},
                {"sha256": hash_key("today"), "expires": today},
                {"sha256": hash_key("later"), "expires": "2999-01-01T00:00:00+07:00"},
                hash_key("forever"),
            ]},
        ],
        "rights": {"alice": ["prov/echo"]},
    }  # fmt: skip
    registry = Registry.from_dict(raw, catalog)
    assert registry.authenticate("old") is None  # rotated out
    assert [registry.authenticate(k) is not None for k in ("today", "later", "forever")] == [True] * 3
    raw["agencies"][1]["keys_sha256"] = [{"sha256": hash_key("x"), "expires": "soon"}]
    with pytest.raises(RegistryError, match="expiry"):
        Registry.from_dict(raw, catalog)


_H = hash_key("k")
_P = {"id": "prov"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "expected a mapping with an 'agencies' list"),
        ({"agencies": [{"id": "Bad Id"}]}, r"agencies\[0\]\.id: needs an 'id'"),
        ({"agencies": [_P, _P]}, "listed twice"),
        ({"agencies": [_P, {"id": "a", "keys_sha256": ["abc"]}]}, "not a hex SHA-256"),
        ({"agencies": [_P, {"id": "a", "keys_sha256": [_H]}, {"id": "b", "keys_sha256": [_H]}]},
         "a key of 'b' is held by 'a'"),
        ({"agencies": [_P, {"id": "a", "certs_sha256": ["zz"]}]}, "not a certificate's SHA-256"),
        ({"agencies": [_P, {"id": "a", "certs_sha256": [_H]}, {"id": "b", "certs_sha256": [_H]}]},
         "a certificate of 'b' is held by 'a'"),
        ({"agencies": [{"id": "a"}]}, "services of 'prov', which is no agency"),
        ({"agencies": [_P], "rights": ["prov/echo"]}, "rights must map agency id"),
        ({"agencies": [_P], "events": {"read": {}}}, "'events' has 'publish' and 'subscribe'"),
        ({"agencies": [_P], "events": {"publish": ["prov/changed"]}}, "events.publish must map"),
        ({"agencies": [_P], "events": {"subscribe": {"ghost": []}}}, "names unknown agency 'ghost'"),
        ({"agencies": [_P], "events": {"subscribe": {"prov": ["prov/nothing"]}}}, "names no event type"),
        ({"agencies": [_P, {"id": "a"}], "events": {"publish": {"a": ["prov/changed"]}}},
         "only prov publishes its events"),
    ],
)  # fmt: skip
def test_a_malformed_registry_stops_start_up_naming_its_fault(tmp_path: Path, raw: Any, message: str) -> None:
    catalog = Catalog.load(write_contracts(tmp_path, "prov"))
    with pytest.raises(RegistryError, match=message):
        Registry.from_dict(raw, catalog, source="reg.yaml")


def test_a_registry_file_that_is_missing_or_not_yaml_is_named(tmp_path: Path) -> None:
    catalog = Catalog.load(write_contracts(tmp_path, "prov"))
    with pytest.raises(RegistryError, match="registry file not found"):
        Registry.load(tmp_path / "none.yaml", catalog)
    bad = tmp_path / "bad.yaml"
    bad.write_text("agencies: [unclosed")
    with pytest.raises(RegistryError, match="not valid YAML"):
        Registry.load(bad, catalog)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"provider": "other"}, "provider 'other' does not match the file's location"),
        ({"timeout_ms": 0}, "timeout_ms must be an integer from 1 to 300000"),
        ({"timeout_ms": "5s"}, "timeout_ms must be an integer"),
        ({"async_ttl_s": 10**9}, "async_ttl_s must be an integer from 1 to"),
        ({"effects": "delete"}, "effects must be 'read' or 'write'"),
        ({"title": None, "request": None}, None),  # replaced below: missing fields
    ],
)
def test_a_malformed_contract_stops_start_up_naming_the_file_and_the_fault(
    tmp_path: Path, overrides: dict[str, Any], message: str | None
) -> None:
    schemas = _contract(tmp_path, **overrides)
    if message is None:  # a contract without its title and request
        path = schemas / "prov" / "echo.json"
        doc = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("title", "request")}
        path.write_text(json.dumps(doc))
        message = "missing title, request"
    with pytest.raises(CatalogError, match=r"prov/echo\.json: " + message):
        Catalog.load(schemas)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "a contract must be a JSON object"),
    ],
)
def test_a_contract_that_is_not_a_json_object_is_named(tmp_path: Path, content: str, message: str) -> None:
    schemas = write_contracts(tmp_path, "prov")
    (schemas / "prov" / "echo.json").write_text(content)
    with pytest.raises(CatalogError, match=message):
        Catalog.load(schemas)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"examples": None}, "a JSON Schema with a title and examples"),
        ({"x-ndxp-key": "nope"}, "x-ndxp-key must name a required property"),
        ({"type": 12}, "the schema does not compile"),
        ({"examples": [{"subject": 5}]}, "example 0 fails its own schema"),
    ],
)
def test_a_malformed_event_type_stops_start_up(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    schemas = write_contracts(tmp_path, "prov")
    path = schemas / "prov" / "events" / "changed.json"
    doc = json.loads(path.read_text())
    doc.update(change)
    path.write_text(json.dumps(doc))
    with pytest.raises(CatalogError, match=message):
        Catalog.load(schemas)


def test_names_outside_the_allowed_alphabet_and_a_missing_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="schemas directory not found"):
        Catalog.load(tmp_path / "none")
    schemas = write_contracts(tmp_path, "prov")
    (schemas / "prov" / "echo.json").rename(schemas / "prov" / "Echo Service.json")
    with pytest.raises(CatalogError, match=r"names must match \[a-z0-9_-\]\+"):
        Catalog.load(schemas)


def test_subject_schemas_follow_the_catalog_and_are_compiled_once() -> None:
    """The data tracker's identifier check: what some contract's x-ndxp-subject field accepts."""
    from broker.contracts.catalog import service_from_document

    catalog = Catalog.load(Settings().schemas_dir)
    schemas = catalog.subject_schemas()
    assert catalog.subject_schemas() is schemas, "compiled once, not per tracker query"
    assert any(not c.violations("079123456789") for c in schemas)  # a CCCD
    assert all(c.violations("MST-0101234567") for c in schemas)
    doc = json.loads((Settings().schemas_dir / "bca" / "citizen.json").read_text())
    doc["request"]["properties"]["cccd"] = {"type": "string", "pattern": "^MST-[0-9]{10}$"}
    doc.pop("examples", None)
    catalog.put(service_from_document(doc, "gdt", "taxpayer", source="test"))
    assert any(not c.violations("MST-0101234567") for c in catalog.subject_schemas())
