"""Bộ Công an — national population database (Cơ sở dữ liệu quốc gia về dân cư)."""

from __future__ import annotations

import hashlib
from contextlib import AsyncExitStack
from typing import Any

from adapters.demo import synthetic
from adapters.demo.agencies.common import citizen_or_404, person_fields, simulated
from adapters.runtime import Handler, Request
from broker.settings import Settings


def handlers(settings: Settings, resources: AsyncExitStack) -> dict[str, Handler]:
    @simulated(settings)
    async def citizen(req: Request) -> dict[str, Any]:
        p = citizen_or_404(req.body["cccd"])
        return {
            **person_fields(p),
            "birth_province": p.birth_province,
            "permanent_address": p.address,
            "nationality": "Việt Nam",
        }

    @simulated(settings)
    async def verify_identity(req: Request) -> dict[str, Any]:
        # Answers only yes/no: an unknown CCCD is simply "no match".
        p = synthetic.person(req.body["cccd"])
        match = (
            p is not None
            and synthetic.normalise_name(p.full_name) == synthetic.normalise_name(req.body["full_name"])
            and p.birth_date.isoformat() == req.body["birth_date"]
        )
        return {"match": match}

    @simulated(settings)
    async def household(req: Request) -> dict[str, Any]:
        p = citizen_or_404(req.body["cccd"])
        return {
            "household_id": f"HK{synthetic.rng('hk-id', p.cccd).randrange(10**10):010d}",
            "address": p.address,
            "members": [{**person_fields(m), "relation": relation} for relation, m in synthetic.household(p)],
        }

    @simulated(settings)
    async def register_address(req: Request) -> dict[str, Any]:
        # A write: the change is recorded, and committed with the answer exactly once.
        p = citizen_or_404(req.body["cccd"])
        a = req.body["address"]
        address = f"{a['street']}, {a['ward']}, {a['province']}"
        registration_id = "TT" + hashlib.sha256(req.meta.exchange_id.encode()).hexdigest()[:12].upper()
        req.record_change(
            p.cccd,
            {"registration_id": registration_id, "cccd": p.cccd, "permanent_address": address,
             "moved_on": req.body["moved_on"], "previous_address": p.address},
        )  # fmt: skip
        # Subscribers (provinces, social insurance) learn of the move: same transaction, exactly once.
        req.publish_event(
            "address_changed",
            p.cccd,
            {"cccd": p.cccd, "address": dict(a), "moved_on": req.body["moved_on"],
             "registration_id": registration_id},
        )  # fmt: skip
        return {
            "registration_id": registration_id,
            "cccd": p.cccd,
            "permanent_address": address,
            "moved_on": req.body["moved_on"],
            "status": "registered",
        }

    return {
        "citizen": citizen,
        "verify_identity": verify_identity,
        "household": household,
        "register_address": register_address,
    }
