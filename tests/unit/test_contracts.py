"""One contract test for every service of every adapter, the bound ones included (no Kafka).

Each service's handler is called with every example request of its contract
(a bound service through its binding, to its agency's own backend run here
in-process: land over REST, social insurance over SOAP); the answer must fit
the contract's response schema, or be one of the provider's own business
errors with a problem body. A service in the catalog with no handler or
binding, or a handler with no contract, fails too.
"""

from __future__ import annotations

import importlib.metadata
from contextlib import AsyncExitStack
from importlib.metadata import EntryPoint
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from adapters.demo import agencies, land_backend, soap_backend
from adapters.demo.agencies import AGENCIES, ENTRY_POINTS, handlers_for, known
from adapters.runtime import Request
from adapters.runtime.bindings import compile_binding
from adapters.runtime.contract import check_contracts
from broker.contracts.catalog import Catalog
from broker.errors import BusinessError
from broker.settings import Settings

SETTINGS = Settings()
CATALOG = Catalog.load(SETTINGS.schemas_dir)
SERVICES = sorted(s.key for s in CATALOG)


def test_every_agency_serves_exactly_its_contracts() -> None:
    bound = {s.key for s in CATALOG if s.binding is not None}
    assert bound == {"tnmt/land_parcel", "bhxh/insurance_status", "bhxh/health_card"}
    assert set(AGENCIES) | {k.split("/")[0] for k in bound} == set(CATALOG.providers())
    for agency in CATALOG.providers():
        code = set(handlers_for(agency, SETTINGS, AsyncExitStack())) if agency in AGENCIES else set()
        served = code | {k.split("/")[1] for k in bound if k.startswith(f"{agency}/")}
        assert served == {s.service for s in CATALOG.of_provider(agency)}, agency
        assert not code & {k.split("/")[1] for k in bound}, f"{agency}: code and a binding for one service"


@pytest.mark.parametrize("key", SERVICES)
async def test_every_example_gets_an_answer_within_the_contract(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agency kit's contract test (``ndxp adapter --check``), on every service of the demo: a bound
    one through its binding to its own backend, in-process."""
    provider, service = key.split("/")
    svc = CATALOG.get(provider, service)
    assert svc is not None
    assert svc.examples, f"{key} has no example request"
    land = TestServer(land_backend.create_backend(SETTINGS), host="127.0.0.1")
    bhxh = TestServer(soap_backend.create_backend(SETTINGS), host="127.0.0.1")
    for server, who in ((land, "TNMT"), (bhxh, "BHXH")):
        await server.start_server()
        monkeypatch.setenv(f"NDXP_BINDING_{who}_BACKEND", str(server.make_url("")).rstrip("/"))
    try:
        async with AsyncExitStack() as resources:
            if svc.binding is not None:
                handler, client = await compile_binding(svc, SETTINGS)
                resources.push_async_callback(client.close)
            else:
                handler = handlers_for(provider, SETTINGS, resources)[service]
            only = Catalog()
            only.put(svc)
            findings = await check_contracts(provider, {service: handler}, only)
    finally:
        await land.close()
        await bhxh.close()
    assert len(findings) == len(svc.examples)
    assert all(f.ok for f in findings), [f.what for f in findings if not f.ok]


async def test_the_contract_test_finds_what_is_wrong() -> None:
    async def outside(_: Request) -> Any:
        return {"cccd": 12}

    async def crashes(_: Request) -> Any:
        raise RuntimeError("boom")

    async def refuses_badly(_: Request) -> Any:
        raise BusinessError(500, "oops", "x")

    handlers = {"citizen": outside, "household": crashes, "verify_identity": refuses_badly, "extra": outside}
    findings = await check_contracts("bca", handlers, CATALOG)
    by = {(f.service, f.ok): f.what for f in findings}
    assert "answers outside the contract" in by[("citizen", False)]
    assert "the handler failed: RuntimeError: boom" in by[("household", False)]
    assert "must be 4xx" in by[("verify_identity", False)]
    assert by[("extra", False)] == "a handler with no contract in the catalog"
    assert by[("register_address", False)].startswith("no handler")
    assert not any(f.ok for f in findings)


def make_handlers(settings: Settings, resources: AsyncExitStack) -> dict[str, Any]:
    """An agency package's entry point (``ndxp.agencies``): here, the test's."""

    async def permit(req: Request) -> Any:
        return {"permit_id": req.body["permit_id"]}

    return {"building_permit": permit}


def test_an_agencys_own_package_plugs_in_through_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    point = EntryPoint("sxd", f"{__name__}:make_handlers", ENTRY_POINTS)
    real = importlib.metadata.entry_points

    def entry_points(**kw: Any) -> Any:
        if kw == {"group": ENTRY_POINTS, "name": "sxd"}:
            return [point]
        return real(**kw)

    monkeypatch.setattr(agencies, "entry_points", entry_points)
    assert known("sxd")
    assert not known("nobody")
    assert set(handlers_for("sxd", SETTINGS, AsyncExitStack())) == {"building_permit"}
    with pytest.raises(KeyError):
        handlers_for("nobody", SETTINGS, AsyncExitStack())
