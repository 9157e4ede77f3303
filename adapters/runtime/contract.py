"""The contract test an agency runs against its own handlers, before it connects (no Kafka).

Each of the provider's services in the catalog gets every example request of
its contract through its handler; the answer must fit the contract's
response schema, or be one of the provider's own business errors (4xx, with
a code and a detail). A service with no handler, a handler with no contract,
and an answer that cannot be serialised are failures too. The project's own
adapters pass the same test (``tests/unit/test_contracts.py``).

    ndxp adapter --check <agency>          # its handlers against NDXP_SCHEMAS_DIR
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from adapters.runtime.request import Change, Handler, Request
from broker.contracts.catalog import Catalog, Effects
from broker.errors import BusinessError
from broker.model.envelope import RequestMeta


@dataclass(frozen=True, slots=True)
class Finding:
    """One example's outcome: ``ok``, or what is wrong with it."""

    service: str
    example: int
    ok: bool
    what: str


async def check_contracts(provider: str, handlers: Mapping[str, Handler], catalog: Catalog) -> list[Finding]:
    """Every example of every service of ``provider`` through ``handlers``, in order."""
    services = {s.service: s for s in catalog.of_provider(provider)}
    found = [Finding(name, -1, False, "a handler with no contract in the catalog")
             for name in sorted(set(handlers) - set(services))]  # fmt: skip
    for name, svc in sorted(services.items()):
        handler = handlers.get(name)
        if handler is None:
            found.append(Finding(name, -1, False, "no handler (nor a binding served elsewhere)"))
            continue
        if not svc.examples:
            found.append(Finding(name, -1, False, "the contract has no example request to test with"))
        for i, example in enumerate(svc.examples):
            meta = RequestMeta(exchange_id=f"contract-{name}-{i}", client="contract-test", provider=provider,
                               service=name, reply_to="-", deadline_ms=2**62)  # fmt: skip
            changes: list[Change] | None = [] if svc.effects is Effects.WRITE else None
            try:
                answer = await handler(Request(meta=meta, body=example, changes=changes))
            except BusinessError as exc:
                fine = 400 <= exc.status < 500 and bool(exc.code) and bool(exc.detail)
                found.append(Finding(name, i, fine, f"the provider's own {exc.status} {exc.code}"
                                     if fine else f"a business error must be 4xx with a code and a detail: "
                                     f"{exc.status} {exc.code!r}"))  # fmt: skip
                continue
            except Exception as exc:
                found.append(Finding(name, i, False, f"the handler failed: {type(exc).__name__}: {exc}"))
                continue
            try:
                orjson.dumps(answer)
            except TypeError as exc:
                found.append(Finding(name, i, False, f"the answer is not JSON: {exc}"))
                continue
            bad = svc.response.violations(answer, limit=5)
            said = "; ".join(f"{v.path}: {v.message}" for v in bad)
            found.append(Finding(name, i, not bad, f"answers outside the contract: {said}" if bad else
                                 "answers within the contract"))  # fmt: skip
    return found
