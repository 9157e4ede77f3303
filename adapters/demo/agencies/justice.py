"""Ministry of Justice (Bộ Tư pháp): judicial records (lý lịch tư pháp), civil status (hộ tịch)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from adapters.demo import synthetic
from adapters.demo.agencies.common import citizen_or_404, person_fields, simulated
from adapters.runtime import Handler, Request
from broker.settings import Settings


def handlers(settings: Settings, resources: AsyncExitStack) -> dict[str, Handler]:
    @simulated(settings)
    async def judicial_record(req: Request) -> dict[str, Any]:
        p = citizen_or_404(req.body["cccd"])
        r = synthetic.rng("lltp", p.cccd)
        status = r.choices(["no_conviction", "conviction_expunged", "has_conviction"], [94, 4, 2])[0]
        return {
            **person_fields(p),
            "record_status": status,
            "as_of": synthetic.REFERENCE_DATE.isoformat(),
        }

    @simulated(settings)
    async def birth_record(req: Request) -> dict[str, Any]:
        p = citizen_or_404(req.body["cccd"])
        r = synthetic.rng("khai-sinh", p.cccd)
        father = synthetic.existing_person(r, gender="male", year=p.birth_date.year - r.randint(22, 40))
        mother = synthetic.existing_person(r, gender="female", year=p.birth_date.year - r.randint(20, 38))
        return {
            **person_fields(p),
            "birth_place": p.birth_province,
            "father_name": father.full_name,
            "mother_name": mother.full_name,
            "registration_number": f"{r.randrange(1, 999):03d}/{p.birth_date.year}",
            "registered_on": p.birth_date.isoformat(),
        }

    @simulated(settings)
    async def marital_status(req: Request) -> dict[str, Any]:
        p = citizen_or_404(req.body["cccd"])
        members = synthetic.household(p)
        spouse = next((m for rel, m in members if rel in ("vợ", "chồng")), None)
        r = synthetic.rng("hon-nhan", p.cccd)
        if spouse is not None:
            status = "married"
        elif synthetic.age(p) < 18:
            status = "single"
        else:
            status = r.choices(["single", "divorced", "widowed"], [80, 14, 6])[0]
        answer: dict[str, Any] = {**person_fields(p), "status": status}
        if spouse is not None:
            answer["spouse"] = {"cccd": spouse.cccd, "full_name": spouse.full_name}
        return answer

    return {
        "judicial_record": judicial_record,
        "birth_record": birth_record,
        "marital_status": marital_status,
    }
