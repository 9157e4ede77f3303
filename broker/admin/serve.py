"""The management API's process: its own listener, the registry follower and the one writer.

``ndxp gateway`` runs it beside the gateway's workers (one per instance, restarted
by the same supervisor); ``NDXP_ADMIN_PORT`` is never the exchange port.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry

from broker.admin.api import ADMIN, Admin, json_response, routes
from broker.admin.openapi import admin_openapi
from broker.gateway.limits import Limits
from broker.gateway.middleware import problems, server_header
from broker.gateway.workers import server_ssl_context
from broker.kafka.registry import RegistryFollower, RegistryWriter, seed_if_empty
from broker.lifecycle import run_until_stopped
from broker.logs import setup_logging
from broker.metrics import RegistryMetrics, exposition
from broker.settings import Settings

log = logging.getLogger(__name__)
MAX_ADMIN_BODY = 4 * 1024 * 1024
"""Largest management request (a service version with its schemas and examples)."""


def create_admin_app(
    settings: Settings, metrics_registry: CollectorRegistry | None = None
) -> web.Application:
    collector = metrics_registry or CollectorRegistry()
    metrics = RegistryMetrics(collector, "admin")
    follower = RegistryFollower(settings, part="admin", metrics=metrics, changes=True)
    admin = Admin(
        settings=settings,
        follower=follower,
        writer=RegistryWriter(settings, follower, metrics),
        metrics=metrics,
        limits=Limits(
            default_rate=settings.default_rate_limit,
            max_in_flight=settings.max_in_flight,
            workers=1,
            auth_failure_rate=settings.auth_failure_rate,
            max_streams=settings.max_streams,
        ),
    )
    app = web.Application(middlewares=[problems], client_max_size=MAX_ADMIN_BODY)
    app.on_response_prepare.append(server_header)
    app[ADMIN] = admin

    async def live_registry(app: web.Application) -> AsyncIterator[None]:
        await follower.start()
        if settings.registry_seed and await seed_if_empty(settings, follower, metrics):
            log.warning("the live registry was empty: imported %s and %s", settings.registry_path,
                        settings.schemas_dir)  # fmt: skip
        yield
        await admin.writer.stop()
        await follower.stop()

    app.cleanup_ctx.append(live_registry)
    routes(app)

    async def openapi(_: web.Request) -> web.Response:
        return json_response(admin_openapi())

    async def healthz(_: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok = follower.healthy
        body = {"status": "ready" if ok else "not ready", "registry_version": follower.live.applied}
        return json_response(body, 200 if ok else 503)

    async def metrics_page(_: web.Request) -> web.Response:
        return exposition(collector)

    app.router.add_get("/admin/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app


async def serve_admin(settings: Settings, on_ready: Callable[[], Any] | None = None) -> None:
    """Serve the management API until SIGTERM/SIGINT."""
    app = create_admin_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_grace_s)
    await runner.setup()
    site = web.TCPSite(
        runner, settings.admin_host, settings.admin_port, ssl_context=server_ssl_context(settings),
        shutdown_timeout=settings.shutdown_grace_s,
    )  # fmt: skip
    follower = app[ADMIN].follower
    try:
        await site.start()
        log.info("management API serving on %s:%d", settings.admin_host, settings.admin_port)
        if on_ready is not None:
            on_ready()
        await run_until_stopped(
            lambda: None if follower.healthy else f"registry follower stopped: {follower.failed!r}"
        )
    finally:
        await runner.cleanup()


def admin_main(settings: Settings, ready: Any) -> None:
    """The admin process (spawned by the gateway's supervisor)."""
    import signal
    import sys

    setup_logging(settings.log_level, "%(asctime)s %(levelname)s admin %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        uvloop.run(serve_admin(settings, on_ready=lambda: ready.put(-1)))
    except OSError as exc:
        log.error("management API: cannot listen on %s:%d: %s", settings.admin_host, settings.admin_port, exc)
        sys.exit(1)
    except Exception:
        log.exception("management API failed")
        sys.exit(1)
