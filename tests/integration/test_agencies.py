"""The simulated national databases through the real gateway and Kafka."""

from __future__ import annotations

from typing import Any

import pytest

from broker.contracts.catalog import Catalog
from broker.contracts.registry import Registry
from broker.settings import Settings
from tests.integration.demo_fixtures import demo_platform

pytestmark = pytest.mark.kafka


async def test_every_example_passes_through_the_gateway_and_fits_its_contract(
    settings: Settings,
) -> None:
    catalog = Catalog.load(settings.schemas_dir)
    assert len(catalog) >= 12
    assert len(catalog.providers()) >= 6
    async with demo_platform(settings) as (http, _):
        listed = (await (await http.get("/v1/services")).json())["services"]
        assert {f"{s['provider']}/{s['service']}" for s in listed} == {s.key for s in catalog}
        for svc in catalog:
            assert svc.examples, svc.key
            for example in svc.examples:
                resp = await http.post(
                    f"/v1/exchange/{svc.key}",
                    json=example,
                    headers={"Authorization": "Bearer demo-dvcqg"},
                )
                body = await resp.json(content_type=None)
                assert resp.status == 200, (svc.key, example, body)
                assert svc.response.is_valid(body), (svc.key, svc.response.violations(body))


async def test_demo_access_rights_hold_for_every_client_and_service(settings: Settings) -> None:
    catalog = Catalog.load(settings.schemas_dir)
    registry = Registry.load(settings.registry_path, catalog)
    clients = [a.id for a in registry if registry.authenticate(f"demo-{a.id}") is not None]
    assert {"hanoi", "danang", "langson", "dvcqg", "vneid", "vcb"} <= set(clients)
    # Policy facts a real deployment would insist on.
    assert registry.allowed("vcb", "bca", "verify_identity")
    assert not registry.allowed("vcb", "bca", "household")
    assert not registry.allowed("vcb", "bca", "citizen")
    async with demo_platform(settings) as (http, _):
        for client in clients:
            key = {"Authorization": f"Bearer demo-{client}"}
            allowed = await (await http.get("/v1/allowed", headers=key)).json()
            assert allowed["services"] == registry.allowed_services(client)
            for svc in catalog:
                resp = await http.post(f"/v1/exchange/{svc.key}", json=svc.examples[0], headers=key)
                await resp.read()
                expected = 200 if registry.allowed(client, svc.provider, svc.service) else 403
                assert resp.status == expected, (client, svc.key, resp.status)


async def test_unknown_identifiers_get_the_providers_own_404_and_malformed_ones_never_reach_kafka(
    settings: Settings,
) -> None:
    from adapters.demo import synthetic

    missing = next(f"001090{i:06d}" for i in range(10**6) if synthetic.person(f"001090{i:06d}") is None)
    key = {"Authorization": "Bearer demo-dvcqg"}
    async with demo_platform(settings) as (http, _):
        resp = await http.post("/v1/exchange/bca/citizen", json={"cccd": missing}, headers=key)
        body = await resp.json(content_type=None)
        assert resp.status == 404
        assert body["code"] == "citizen_not_found"
        for bad in ("12345", "999090012345", "00109001234X"):
            resp = await http.post("/v1/exchange/bca/citizen", json={"cccd": bad}, headers=key)
            assert resp.status == 400, bad
            assert (await resp.json(content_type=None))["code"] == "invalid_request"


async def test_generated_identifiers_through_kafka_fit_contracts_repeat_and_agree(
    settings: Settings,
) -> None:
    """The property tests' claims, over the real path (gateway, Kafka, adapters, backend)."""
    import random

    from adapters.demo import synthetic

    catalog = Catalog.load(settings.schemas_dir)
    r = random.Random(2024)
    people = [
        synthetic.make_cccd(r, gender=r.choice(["male", "female"]), year=r.randint(1930, 2020))
        for _ in range(25)
    ]
    parcels = [
        f"{r.choice(sorted(synthetic.PROVINCES))}-{r.randrange(10**5):05d}-{r.randint(1, 99)}-"
        f"{r.randint(1, 9999)}"
        for _ in range(15)
    ]
    keys = [{"Authorization": "Bearer demo-dvcqg"}, {"Authorization": "Bearer demo-hanoi"}]

    async def call(http: Any, key: str, body: dict[str, str], headers: dict[str, str]) -> tuple[int, Any]:
        resp = await http.post(f"/v1/exchange/{key}", json=body, headers=headers)
        return resp.status, await resp.json(content_type=None)

    async with demo_platform(settings) as (http, _):
        for cccd in people:
            answers = {}
            for key in ("bca/citizen", "bhxh/insurance_status", "btp/judicial_record"):
                first = await call(http, key, {"cccd": cccd}, keys[0])
                again = await call(http, key, {"cccd": cccd}, keys[1])
                status, body = first
                # The same identifier gives the same answer (a 404's body differs only in its id).
                assert again[0] == status, (key, cccd)
                assert again[1] == body if status == 200 else again[1]["code"] == body["code"]
                assert status in (200, 404), (key, cccd, body)
                if status == 200:
                    svc = catalog.get(*_split(key))
                    assert svc is not None
                    assert svc.response.is_valid(body), (key, svc.response.violations(body))
                answers[key] = first
            statuses = {s for s, _ in answers.values()}
            assert len(statuses) == 1, (cccd, answers)
            if statuses == {200}:
                identities = {
                    tuple(b[f] for f in ("full_name", "gender", "birth_date")) for _, b in answers.values()
                }
                assert len(identities) == 1, (cccd, identities)
        land = catalog.get("tnmt", "land_parcel")
        assert land is not None
        for parcel_id in parcels:
            status, body = await call(http, "tnmt/land_parcel", {"parcel_id": parcel_id}, keys[0])
            assert status in (200, 404), (parcel_id, body)
            if status == 200:
                assert land.response.is_valid(body), land.response.violations(body)
                _, owner = await call(http, "bca/citizen", {"cccd": body["owner"]["cccd"]}, keys[0])
                assert owner["full_name"] == body["owner"]["full_name"]


def _split(name: str) -> tuple[str, str]:
    """``provider/service`` as its two parts."""
    provider, _, service = name.partition("/")
    return provider, service
