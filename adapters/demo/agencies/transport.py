"""Traffic police (Cục Cảnh sát giao thông): driving licences and vehicle registration."""

from __future__ import annotations

import datetime as dt
import re
from contextlib import AsyncExitStack
from typing import Any

from adapters.demo import synthetic
from adapters.demo.agencies.common import not_found, simulated
from adapters.runtime import Handler, Request
from broker.settings import Settings

_PLATE = re.compile(r"^([0-9]{2})([A-Z]{1,2}[0-9]?)-([0-9]{3})\.?([0-9]{2})$")


def handlers(settings: Settings, resources: AsyncExitStack) -> dict[str, Handler]:
    @simulated(settings)
    async def driving_licence(req: Request) -> dict[str, Any]:
        number = req.body["licence_number"]
        province = f"0{number[:2]}"
        if province not in synthetic.PROVINCES or not synthetic.exists("licence", number):
            raise not_found("licence", number)
        r = synthetic.rng("gplx", number)
        holder = synthetic.existing_person(
            r, gender=r.choice(["male", "female"]), year=r.randint(1960, 2006), province=province
        )
        issued = max(
            holder.birth_date.replace(year=holder.birth_date.year + 18, day=1),
            synthetic.REFERENCE_DATE - dt.timedelta(days=r.randrange(1, 365 * 15)),
        )
        licence_class = r.choice(synthetic.LICENCE_CLASSES)
        expires = None if licence_class in ("A1", "A") else synthetic.add_years(issued, 10)
        return {
            "licence_number": number,
            "holder": {"cccd": holder.cccd, "full_name": holder.full_name,
                       "birth_date": holder.birth_date.isoformat()},
            "class": licence_class,
            "issued_on": issued.isoformat(),
            "expires_on": expires.isoformat() if expires else None,
            "status": "valid" if expires is None or expires > synthetic.REFERENCE_DATE else "expired",
        }  # fmt: skip

    @simulated(settings)
    async def vehicle(req: Request) -> dict[str, Any]:
        plate = req.body["plate"]
        m = _PLATE.match(plate)
        if m is None or m.group(1) not in synthetic.PLATE_PROVINCES:
            raise not_found("vehicle", plate)
        canonical = f"{m.group(1)}{m.group(2)}-{m.group(3)}.{m.group(4)}"
        if not synthetic.exists("vehicle", canonical):
            raise not_found("vehicle", plate)
        r = synthetic.rng("vehicle", canonical)
        brand, model = r.choice(synthetic.CARS)
        owner = synthetic.existing_person(r, gender=r.choice(["male", "female"]), year=r.randint(1955, 2004))
        year = r.randint(2008, synthetic.REFERENCE_DATE.year - 1)
        return {
            "plate": canonical,
            "registered_province": synthetic.PLATE_PROVINCES[m.group(1)],
            "brand": brand,
            "model": model,
            "colour": r.choice(synthetic.COLOURS),
            "manufacture_year": year,
            "owner": {"cccd": owner.cccd, "full_name": owner.full_name},
            "registered_on": dt.date(year, r.randint(1, 12), r.randint(1, 28)).isoformat(),
            "status": r.choices(["registered", "deregistered"], [97, 3])[0],
        }

    return {"driving_licence": driving_licence, "vehicle": vehicle}
