"""One contract test for every service of every adapter, the land registry's included (no Kafka).

Each service's handler is called with every example request of its contract
(the land adapter forwards to its own REST backend, run here in-process); the
answer must fit the contract's response schema, or be one of the provider's own
business errors with a problem body. A service in the catalog with no handler,
or a handler with no contract, fails too.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
from aiohttp.test_utils import TestServer

from adapters.demo.agencies import AGENCIES, handlers_for
from adapters.demo.land_backend import create_backend
from adapters.runtime import Change, Request
from broker.contracts.catalog import Catalog, Effects
from broker.errors import BusinessError
from broker.model.envelope import RequestMeta
from broker.settings import Settings

SETTINGS = Settings()
CATALOG = Catalog.load(SETTINGS.schemas_dir)
SERVICES = sorted(s.key for s in CATALOG)


def test_every_agency_serves_exactly_its_contracts() -> None:
    assert set(AGENCIES) == set(CATALOG.providers())
    for agency in AGENCIES:
        with_handlers = set(handlers_for(agency, SETTINGS, AsyncExitStack()))
        assert with_handlers == {s.service for s in CATALOG.of_provider(agency)}, agency


@pytest.mark.parametrize("key", SERVICES)
async def test_every_example_gets_an_answer_within_the_contract(key: str) -> None:
    provider, service = key.split("/")
    svc = CATALOG.get(provider, service)
    assert svc is not None
    assert svc.examples, f"{key} has no example request"
    backend = TestServer(create_backend(SETTINGS), host="127.0.0.1")
    await backend.start_server()
    settings = SETTINGS.replace(land_backend_url=str(backend.make_url("")).rstrip("/"))
    try:
        async with AsyncExitStack() as resources:
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
        await backend.close()
