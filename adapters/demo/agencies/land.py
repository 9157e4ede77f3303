"""Land registry (Bộ Nông nghiệp và Môi trường — đất đai), served from its own backend.

The adapter forwards each request to the registry's REST backend
(``NDXP_LAND_BACKEND_URL``) and maps the backend's vocabulary to the
contract. What the backend answers outside the contract reaches the gateway
as it is, and the gateway's response check turns it into ``invalid_response``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import quote

from adapters.demo import synthetic
from adapters.demo.agencies.common import not_found
from adapters.runtime import Handler, Request
from adapters.runtime.forward import Forwarder
from broker.settings import Settings


def handlers(settings: Settings, resources: AsyncExitStack) -> dict[str, Handler]:
    backend = Forwarder(settings.land_backend_url, timeout_ms=settings.backend_timeout_ms)
    resources.push_async_callback(backend.close)

    async def land_parcel(req: Request) -> dict[str, Any]:
        parcel_id = req.body["parcel_id"]
        raw = await backend.get_json(
            f"/api/v1/thua-dat/{quote(parcel_id)}", req.meta, missing=not_found("parcel", parcel_id)
        )
        owner = raw.get("chuSuDung") or {}
        use = raw.get("mucDichSuDung")
        return {
            "parcel_id": raw.get("maThua"),
            "province": raw.get("tinhThanh"),
            "area_m2": raw.get("dienTichM2"),
            "land_use": {"code": use, "name": synthetic.LAND_USE.get(str(use), "")},
            "owner": {"cccd": owner.get("soCccd"), "full_name": owner.get("hoTen")},
            "certificate_number": raw.get("soGiayChungNhan"),
            "mortgaged": raw.get("dangTheChap"),
        }

    return {"land_parcel": land_parcel}
