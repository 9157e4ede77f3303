"""Registry and catalog checks at start-up, without Kafka."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker.catalog import Catalog, CatalogError
from broker.errors import RateLimited
from broker.gateway.limits import Limits
from broker.registry import Agency, Registry, RegistryError, hash_key
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
