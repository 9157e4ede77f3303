"""Bộ Công an — national population database (Cơ sở dữ liệu quốc gia về dân cư)."""

from __future__ import annotations

import asyncio
from typing import Any

from adapters import synthetic
from adapters.runtime import BusinessError, Handler, Request
from broker.settings import Settings


def _not_found(cccd: str) -> BusinessError:
    return BusinessError(404, "citizen_not_found", f"no citizen with CCCD {cccd}")


def handlers(settings: Settings) -> dict[str, Handler]:
    latency = settings.sim_latency_ms / 1000

    async def citizen(req: Request) -> dict[str, Any]:
        if latency:
            await asyncio.sleep(latency)
        cccd = req.body["cccd"]
        p = synthetic.person(cccd)
        if p is None:
            raise _not_found(cccd)
        return {
            "cccd": p.cccd,
            "full_name": p.full_name,
            "gender": p.gender,
            "birth_date": p.birth_date.isoformat(),
            "birth_province": p.birth_province,
            "permanent_address": p.address,
        }

    return {"citizen": citizen}
