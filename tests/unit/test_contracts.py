"""One contract test for every service of every adapter, the bound ones included (no Kafka).

Each service's handler is called with every example request of its contract
(a bound service through its binding, to its agency's own backend run here
in-process: land over REST, social insurance over SOAP); the answer must fit
the contract's response schema, or be one of the provider's own business
errors with a problem body. A service in the catalog with no handler or
binding, or a handler with no contract, fails too.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
from aiohttp.test_utils import TestServer

from adapters.demo import land_backend, soap_backend
from adapters.demo.agencies import AGENCIES, handlers_for
from adapters.runtime import Change, Request
from adapters.runtime.bindings import compile_binding
from broker.contracts.catalog import Catalog, Effects
from broker.errors import BusinessError
from broker.model.envelope import RequestMeta
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
    provider, service = key.split("/")
    svc = CATALOG.get(provider, service)
    assert svc is not None
    assert svc.examples, f"{key} has no example request"
    land = TestServer(land_backend.create_backend(SETTINGS), host="127.0.0.1")
    bhxh = TestServer(soap_backend.create_backend(SETTINGS), host="127.0.0.1")
    for server, who in ((land, "TNMT"), (bhxh, "BHXH")):
        await server.start_server()
        monkeypatch.setenv(f"NDXP_BINDING_{who}_BACKEND", str(server.make_url("")).rstrip("/"))
    settings = SETTINGS
    try:
        async with AsyncExitStack() as resources:
            if svc.binding is not None:
                handler, client = await compile_binding(svc, settings)
                resources.push_async_callback(client.close)
            else:
                handler = handlers_for(provider, settings, resources)[service]
            for i, example in enumerate(svc.examples):
                meta = RequestMeta(
                    exchange_id=f"contract-{i}", client="test", provider=provider, service=service,
                    reply_to="-", deadline_ms=2**62,
                )  # fmt: skip
                changes: list[Change] | None = [] if svc.effects is Effects.WRITE else None
                refused: BusinessError | None = None
                try:
                    answer = await handler(Request(meta=meta, body=example, changes=changes))
                except BusinessError as exc:
                    refused = exc  # the provider's own answer: checked below
                if refused is None:
                    bad = svc.response.violations(answer)
                    assert not bad, (
                        f"{key} example {i} answered outside its contract: {[v.as_dict() for v in bad]}"
                    )
                    continue
                problem = refused.problem(meta.exchange_id)
                assert 400 <= refused.status < 500, (
                    f"{key} example {i}: a business error is the caller's case"
                )
                assert problem["code"], problem
                assert problem["detail"], problem
    finally:
        await land.close()
        await bhxh.close()
