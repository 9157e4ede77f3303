"""The gateway application and its worker processes.

``create_app(settings)`` builds one worker's aiohttp app: routes, the problem
middleware, and one cleanup context per resource (Kafka producer, then reply
router), entered in order and exited in reverse. ``run_gateway`` runs N such
workers on one port with SO_REUSEPORT; SIGTERM stops accepting, lets
in-flight exchanges finish within the grace period, flushes, exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from multiprocessing.queues import Queue
from typing import Any

import orjson
import uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry

from broker.catalog import Catalog
from broker.envelope import reply_topic
from broker.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NdxpError,
    NotFound,
    PayloadTooLarge,
)
from broker.gateway import meta
from broker.gateway.exchange import exchange
from broker.gateway.limits import Limits
from broker.gateway.replies import ReplyRouter
from broker.gateway.state import EXCHANGE_ID, GATEWAY, Gateway
from broker.kafka import make_producer
from broker.metrics import GatewayMetrics
from broker.registry import Registry
from broker.settings import Settings

log = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(exc: NdxpError, exchange_id: str) -> web.Response:
    resp = web.Response(
        body=orjson.dumps(exc.problem(exchange_id)),
        status=exc.status,
        content_type="application/problem+json",
    )
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.499)))
    return resp


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Exchange id on every request and response; every error as problem+json."""
    given = request.headers.get("X-Request-Id")
    valid = given is not None and _REQUEST_ID.match(given) is not None
    exchange_id = given if valid and given is not None else uuid.uuid4().hex
    request[EXCHANGE_ID] = exchange_id
    try:
        if given is not None and not valid:
            raise InvalidRequest("X-Request-Id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
        resp = await handler(request)
    except NdxpError as exc:
        resp = problem_response(exc, exchange_id)
    except web.HTTPException as exc:
        mapped: NdxpError
        if exc.status == 404:
            mapped = NotFound(f"no such path: {request.path}")
        elif exc.status == 405:
            mapped = MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        elif exc.status == 413:
            mapped = PayloadTooLarge("request body too large")
        else:
            raise
        resp = problem_response(mapped, exchange_id)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        resp = problem_response(NdxpError("unexpected error; see the gateway log"), exchange_id)
    resp.headers["X-Request-Id"] = exchange_id
    return resp


def worker_reply_topic(settings: Settings, worker: int) -> str:
    return reply_topic(_TOPIC_UNSAFE.sub("_", f"{settings.instance_id}-w{worker}"))


def create_app(
    settings: Settings,
    *,
    worker: int = 0,
    catalog: Catalog | None = None,
    registry: Registry | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> web.Application:
    """One gateway worker's application."""
    catalog = catalog if catalog is not None else Catalog.load(settings.schemas_dir)
    if registry is None:
        registry = Registry.load(settings.registry_path, catalog)
    metrics = GatewayMetrics(metrics_registry or CollectorRegistry())
    gw = Gateway(
        settings=settings,
        catalog=catalog,
        registry=registry,
        metrics=metrics,
        limits=Limits(
            default_rate=settings.default_rate_limit,
            max_in_flight=settings.max_in_flight,
            workers=settings.workers,
        ),
        replies=ReplyRouter(settings, worker_reply_topic(settings, worker), metrics),
        worker=worker,
    )
    app = web.Application(middlewares=[problems], client_max_size=settings.max_body_bytes)
    app[GATEWAY] = gw

    async def kafka_producer(app: web.Application) -> AsyncIterator[None]:
        gw.producer = make_producer(settings, client_id=f"ndxp-gateway-{worker}")
        await gw.producer.start()
        yield
        await gw.producer.stop()  # flushes what is still batched

    async def reply_router(app: web.Application) -> AsyncIterator[None]:
        await gw.replies.start()
        yield
        await gw.replies.stop()

    app.cleanup_ctx.extend([kafka_producer, reply_router])
    app.router.add_post("/v1/exchange/{provider}/{service}", exchange)
    app.router.add_get("/v1/agencies", meta.agencies)
    app.router.add_get("/v1/services", meta.services)
    app.router.add_get("/v1/services/{provider}/{service}", meta.service)
    app.router.add_get("/v1/allowed", meta.allowed)
    app.router.add_get("/openapi.json", meta.openapi)
    app.router.add_get("/healthz", meta.healthz)
    app.router.add_get("/readyz", meta.readyz)
    app.router.add_get("/metrics", meta.metrics)
    return app


async def serve(settings: Settings, *, worker: int = 0, on_ready: Callable[[], None] | None = None) -> None:
    """Serve one worker until SIGTERM/SIGINT, then shut down gracefully."""
    app = create_app(settings, worker=worker)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_grace_s)
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.host,
        settings.port,
        reuse_port=True,
        backlog=1024,
        shutdown_timeout=settings.shutdown_grace_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await site.start()
        log.info("gateway worker %d serving on %s:%d", worker, settings.host, settings.port)
        if on_ready is not None:
            on_ready()
        await stop.wait()
        log.info("gateway worker %d stopping: finishing in-flight exchanges", worker)
    finally:
        await runner.cleanup()


def _worker_main(settings: Settings, worker: int, ready: Queue[int]) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s gateway[{worker}] %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGTERM
    try:
        uvloop.run(serve(settings, worker=worker, on_ready=lambda: ready.put(worker)))
    except Exception:
        log.exception("gateway worker %d failed", worker)
        sys.exit(1)


def run_gateway(settings: Settings, progress: Callable[[str], Any] = print) -> int:
    """Run ``settings.workers`` worker processes on one port; return the exit code."""
    if settings.port == 0 and settings.workers > 1:
        raise ValueError("several workers need a fixed --port (SO_REUSEPORT)")
    ctx = multiprocessing.get_context("spawn")
    ready: Queue[int] = ctx.Queue()
    procs = [
        ctx.Process(target=_worker_main, args=(settings, i, ready), name=f"gateway-{i}")
        for i in range(settings.workers)
    ]
    stopping = False

    def forward(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.pid is not None and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()  # SIGTERM: graceful

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in procs:
            p.start()
        started = 0
        while started < len(procs) and not stopping:
            try:
                ready.get(timeout=0.5)
                started += 1
            except Exception:  # queue.Empty: check that nobody died
                if any(p.exitcode is not None for p in procs):
                    forward(signal.SIGTERM, None)
                    break
        if started == len(procs):
            progress(f"gateway ready on http://{settings.host}:{settings.port} with {len(procs)} worker(s)")
        for p in procs:
            p.join()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    codes = [p.exitcode or 0 for p in procs]
    return 0 if all(c == 0 for c in codes) else 1
