"""National business registration (Hệ thống thông tin quốc gia về đăng ký doanh nghiệp)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from adapters.demo import synthetic
from adapters.demo.agencies.common import not_found, simulated
from adapters.runtime import Handler, Request
from broker.settings import Settings


def handlers(settings: Settings, resources: AsyncExitStack) -> dict[str, Handler]:
    @simulated(settings)
    async def business(req: Request) -> dict[str, Any]:
        code = req.body["enterprise_code"]
        e = synthetic.enterprise(code)
        if e is None:
            raise not_found("enterprise", code)
        return {
            "enterprise_code": e.code,
            "name": e.name,
            "legal_form": e.legal_form,
            "status": e.status,
            "registered_on": e.registered_on.isoformat(),
            "address": e.address,
            "industry": {"code": e.industry_code, "name": synthetic.VSIC[e.industry_code]},
            "charter_capital_vnd": e.charter_capital_vnd,
            "legal_representative": {
                "cccd": e.representative.cccd,
                "full_name": e.representative.full_name,
            },
        }

    return {"business": business}
