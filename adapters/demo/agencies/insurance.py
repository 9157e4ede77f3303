"""Vietnam Social Security (Bảo hiểm xã hội Việt Nam): insurance status, health card."""

from __future__ import annotations

import datetime as dt
from contextlib import AsyncExitStack
from typing import Any

from adapters.demo import synthetic
from adapters.demo.agencies.common import citizen_or_404, person_fields, simulated
from adapters.runtime import Handler, Request
from broker.settings import Settings


def handlers(settings: Settings, resources: AsyncExitStack) -> dict[str, Handler]:
    @simulated(settings)
    async def insurance_status(req: Request) -> dict[str, Any]:
        p = citizen_or_404(req.body["cccd"])
        r = synthetic.rng("bhxh", p.cccd)
        working_age = 18 <= synthetic.age(p) < 62
        participating = working_age and r.random() < 0.65
        months = r.randrange(1, 12 * (synthetic.age(p) - 17)) if participating else 0
        return {
            **person_fields(p),
            "social_insurance_number": synthetic.insurance_number(p),
            "participating": participating,
            "contribution_months": months,
        }

    @simulated(settings)
    async def health_card(req: Request) -> dict[str, Any]:
        p = citizen_or_404(req.body["cccd"])
        r = synthetic.rng("bhyt", p.cccd)
        group = r.choice(["DN", "HC", "GD", "HS", "TE", "HT"])
        valid_from = dt.date(synthetic.REFERENCE_DATE.year, 1, 1)
        valid_to = dt.date(synthetic.REFERENCE_DATE.year, 12, 31)
        expired = r.random() < 0.1
        if expired:
            valid_from = valid_from.replace(year=valid_from.year - 1)
            valid_to = valid_to.replace(year=valid_to.year - 1)
        return {
            **person_fields(p),
            "card_number": f"{group}{r.randint(1, 5)}{p.cccd[1:3]}{synthetic.insurance_number(p)}",
            "valid_from": valid_from.isoformat(),
            "valid_to": valid_to.isoformat(),
            "valid": not expired,
            "registered_facility": r.choice(synthetic.HOSPITALS),
        }

    return {"insurance_status": insurance_status, "health_card": health_card}
