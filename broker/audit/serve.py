"""`ndxp audit serve`: the exchange log's writer and its internal API, until SIGTERM/SIGINT."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from broker.audit.api import make_app
from broker.audit.index import Reader
from broker.audit.log import AuditLog, index_path
from broker.lifecycle import run_until_stopped
from broker.metrics import AuditMetrics
from broker.settings import Settings


async def run_audit(settings: Settings, progress: Callable[[str], Any] = print) -> None:
    metrics = AuditMetrics(CollectorRegistry())
    service = AuditLog(settings, metrics)
    runner: web.AppRunner | None = None
    reader: Reader | None = None
    try:
        await service.start()
        reader = Reader(index_path(settings))
        app = make_app(
            reader, metrics, service.vkey, lambda: service.healthy, lambda: service.signed_at, service.tracker
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.audit_host, settings.audit_port)
        await site.start()
        progress(
            f"audit log following {settings.tx_topic}: {service.index.tree.size if service.index else 0} "
            f"leaves, key {service.vkey.split('+')[1]}; API on {settings.audit_host}:{settings.audit_port}"
        )
        await run_until_stopped(lambda: None if service.healthy else f"audit log stopped: {service.failed!r}")
        progress("audit log stopping")
    finally:
        if runner is not None:
            await runner.cleanup()
        await service.stop()
        if reader is not None:
            reader.close()
