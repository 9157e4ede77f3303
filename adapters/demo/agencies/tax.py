"""Tax administration (Cục Thuế): tax compliance status by tax code."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from adapters.demo import synthetic
from adapters.demo.agencies.common import not_found, simulated
from adapters.runtime import Handler, Request
from broker.settings import Settings


def handlers(settings: Settings, resources: AsyncExitStack) -> dict[str, Handler]:
    @simulated(settings)
    async def tax_status(req: Request) -> dict[str, Any]:
        code = req.body["tax_code"]
        head, _, branch = code.replace("-", "")[:10], None, code.replace("-", "")[10:]
        e = synthetic.enterprise(head)
        if e is None or (branch and not synthetic.exists("branch", code)):
            raise not_found("taxpayer", code)
        r = synthetic.rng("tax", code)
        debt = 0 if r.random() < 0.85 else r.randrange(1, 500) * 1_000_000
        status = {"active": "active", "suspended": "suspended", "dissolved": "closed"}[e.status]
        return {
            "tax_code": code,
            "taxpayer_name": e.name + (f" - CHI NHÁNH {branch}" if branch else ""),
            "status": status,
            "compliant": debt == 0 and status == "active",
            "outstanding_debt_vnd": debt,
            "last_filed_period": f"{synthetic.REFERENCE_DATE.year - 1}-Q{r.randint(3, 4)}",
        }

    return {"tax_status": tax_status}
