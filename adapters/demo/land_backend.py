"""The land registry's own REST backend (simulated), in the registry's own vocabulary.

``GET /api/v1/thua-dat/{ma_thua}`` answers the parcel with Vietnamese field
names; the platform reaches it with no code, through the binding in
``schemas/tnmt/land_parcel.json`` that maps them onto the contract. Run it
with ``ndxp backend land --port 8091``.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from adapters.demo import synthetic
from broker.settings import Settings


def create_backend(settings: Settings) -> web.Application:
    latency = settings.sim_latency_ms / 1000

    async def parcel(request: web.Request) -> web.Response:
        if latency:
            await asyncio.sleep(latency)
        p = synthetic.parcel(request.match_info["ma_thua"])
        if p is None:
            return web.json_response({"loi": "không tìm thấy thửa đất"}, status=404)
        body = {
            "maThua": p.parcel_id,
            "tinhThanh": p.province,
            "dienTichM2": p.area_m2,
            "mucDichSuDung": p.land_use,
            "tenMucDichSuDung": synthetic.LAND_USE.get(str(p.land_use), ""),
            "chuSuDung": {"soCccd": p.owner.cccd, "hoTen": p.owner.full_name},
            "soGiayChungNhan": p.certificate_number,
            "dangTheChap": p.mortgaged,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/api/v1/thua-dat/{ma_thua}", parcel)
    app.router.add_get("/healthz", healthz)
    return app


async def serve_app(app: web.Application, host: str, port: int) -> None:
    """Serve a backend until cancelled (the CLI cancels on SIGTERM/SIGINT)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
