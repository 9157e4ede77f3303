"""The gateway application and its worker processes.

``create_app(settings)`` builds one worker's aiohttp app: routes, the problem
middleware, and one cleanup context per resource (Kafka producer, transaction
recorder, reply router, stats view), entered in order and exited in reverse. ``run_gateway`` runs N such
workers on one port with SO_REUSEPORT; SIGTERM stops accepting, lets
in-flight exchanges finish within the grace period, flushes, exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import re
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import mark_process_dead

from broker.catalog import Catalog
from broker.counter.recorder import TxRecorder
from broker.counter.stats import StatsView
from broker.envelope import H_HEARTBEAT, REQUEST_PARTITIONS, reply_topic, request_topic
from broker.errors import StartupError
from broker.events import event_topic_specs
from broker.exchanges.view import ExchangeView
from broker.gateway import events, meta
from broker.gateway.exchange import exchange
from broker.gateway.limits import Limits
from broker.gateway.problems import problems, server_header
from broker.gateway.replies import ReplyRouter
from broker.gateway.state import GATEWAY, Gateway
from broker.gateway.stored import get_exchange
from broker.kafka import (
    Reachability,
    StickyPartitioner,
    TopicSpec,
    delete_topics,
    ensure_topics,
    make_producer,
)
from broker.lifecycle import PartFailed, run_until_stopped
from broker.logs import setup_logging
from broker.metrics import GatewayMetrics
from broker.registry import Registry, RegistryError
from broker.settings import Settings

log = logging.getLogger(__name__)
_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def worker_reply_topic(settings: Settings, worker: int) -> str:
    return reply_topic(_TOPIC_UNSAFE.sub("_", f"{settings.instance_id}-w{worker}"))


async def _bounded(stopping: Awaitable[None], within_s: float, what: str) -> None:
    """Stop something within ``within_s``; past that, log and go on: shutdown must not hang.

    The stop runs as its own task, so that a client library that waits out
    its own timeouts (Kafka gone) cannot hold the shutdown past the bound.
    """
    task = asyncio.ensure_future(stopping)
    done, _ = await asyncio.wait({task}, timeout=within_s)
    if not done:
        log.error("the %s did not stop within %.0fs; leaving it", what, within_s)
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    elif task.cancelled():  # aiokafka's stop() can end so when Kafka is gone
        log.warning("the %s stopped by cancellation", what)
    elif task.exception() is not None:
        log.error("the %s failed to stop: %r", what, task.exception())


HEARTBEAT_S = 600.0
"""How often a worker writes "still here" to its reply topic (the keeper deletes reply topics idle
for ``NDXP_REPLY_TOPIC_IDLE_HOURS``: those of workers that were killed and never came back)."""


async def _heartbeat(gw: Gateway) -> None:
    while True:
        try:
            await gw.producer.send(gw.replies.topic, b"", headers=[(H_HEARTBEAT, b"1")])
        except KafkaError as exc:
            log.warning("reply topic heartbeat not sent: %s", exc)
        await asyncio.sleep(HEARTBEAT_S)


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
            auth_failure_rate=settings.auth_failure_rate,
            max_streams=settings.max_streams,
        ),
        replies=ReplyRouter(settings, worker_reply_topic(settings, worker), metrics),
        recorder=TxRecorder(settings.tx_topic, metrics),
        stats=StatsView(settings),
        exchanges=ExchangeView(settings),
        worker=worker,
    )
    app = web.Application(middlewares=[problems], client_max_size=settings.max_body_bytes)
    app.on_response_prepare.append(server_header)
    app[GATEWAY] = gw

    async def kafka_producer(app: web.Application) -> AsyncIterator[None]:
        # Requests and records carry no key (order does not matter): sticky batches.
        gw.producer = make_producer(
            settings, client_id=f"ndxp-gateway-{worker}", partitioner=StickyPartitioner()
        )
        try:
            await gw.producer.start()
        except BaseException:
            await gw.producer.stop()
            raise
        gw.kafka = Reachability(gw.producer)
        gw.kafka.start()
        yield
        await gw.kafka.stop()
        # Flushes what is still batched, but never waits past the grace period (Kafka may be gone).
        await _bounded(gw.producer.stop(), settings.shutdown_grace_s, "producer")

    async def tx_recorder(app: web.Application) -> AsyncIterator[None]:
        # Request topics too: an async exchange is accepted while its provider has never run.
        requests = [
            TopicSpec(name=request_topic(s.provider, s.service), partitions=REQUEST_PARTITIONS)
            for s in catalog
        ]
        events_ = event_topic_specs(settings, catalog)
        await ensure_topics(settings, [TopicSpec(name=settings.tx_topic, partitions=4), *requests, *events_])
        gw.recorder.start(gw.producer)
        yield
        await _bounded(gw.recorder.stop(settings.shutdown_grace_s), settings.shutdown_grace_s, "recorder")

    async def reply_router(app: web.Application) -> AsyncIterator[None]:
        await gw.replies.start()
        beat = asyncio.create_task(_heartbeat(gw), name="reply topic heartbeat")
        yield
        beat.cancel()
        await _bounded(gw.replies.stop(), settings.shutdown_grace_s, "reply router")
        # Every exchange of this worker is over: its reply topic goes with it (a worker that is
        # killed leaves its topic, empty after an hour's retention, until it is restarted).
        await _bounded(delete_topics(settings, [gw.replies.topic]), 10.0, "reply topic removal")

    async def stats_view(app: web.Application) -> AsyncIterator[None]:
        await gw.stats.start()
        yield
        await _bounded(gw.stats.stop(), settings.shutdown_grace_s, "stats view")

    async def exchange_view(app: web.Application) -> AsyncIterator[None]:
        await gw.exchanges.start()
        yield
        await _bounded(gw.exchanges.stop(), settings.shutdown_grace_s, "exchange view")

    app.cleanup_ctx.extend([kafka_producer, tx_recorder, reply_router, stats_view, exchange_view])
    app.router.add_post("/v1/exchange/{provider}/{service}", exchange)
    app.router.add_get("/v1/exchanges/{exchange_id}", get_exchange)
    app.router.add_get("/v1/events", events.list_events)
    app.router.add_post("/v1/events/{provider}/{type}", events.publish)
    app.router.add_get("/v1/events/{provider}/{type}", events.subscribe)

    async def end_streams(app: web.Application) -> None:
        for stream in list(gw.streams):
            stream.stopping.set()  # each ends within a poll (1 s), committing its position

    app.on_shutdown.append(end_streams)
    app.router.add_get("/v1/agencies", meta.agencies)
    app.router.add_get("/v1/services", meta.services)
    app.router.add_get("/v1/services/{provider}/{service}", meta.service)
    app.router.add_get("/v1/allowed", meta.allowed)
    app.router.add_get("/v1/stats", meta.stats)
    app.router.add_get("/openapi.json", meta.openapi)
    app.router.add_get("/healthz", meta.healthz)
    app.router.add_get("/readyz", meta.readyz)
    app.router.add_get("/metrics", meta.metrics)
    return app


async def serve(settings: Settings, *, worker: int = 0, on_ready: Callable[[], None] | None = None) -> None:
    """Serve one worker until SIGTERM/SIGINT, then shut down gracefully."""
    app = create_app(settings, worker=worker)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_s,
        keepalive_timeout=settings.keepalive_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.host,
        settings.port,
        reuse_port=True,
        backlog=1024,
        shutdown_timeout=settings.shutdown_grace_s,
        ssl_context=server_ssl_context(settings),
    )
    gw = app[GATEWAY]
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_registry, gw)

    def failure() -> str | None:
        dead = [s for s in (gw.replies, gw.stats, gw.exchanges) if not s.healthy]
        return f"{dead[0].what} stopped: {dead[0].failed!r}" if dead else None

    try:
        await site.start()
        log.info("gateway worker %d serving on %s:%d", worker, settings.host, settings.port)
        if on_ready is not None:
            on_ready()
        await run_until_stopped(failure)
        log.info("gateway worker %d stopping: finishing in-flight exchanges", worker)
    finally:
        await runner.cleanup()


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """HTTPS for the gateway when ``NDXP_TLS_CERT``/``KEY`` are set; client certificates with
    ``NDXP_TLS_CLIENT_CA`` (asked for, verified when sent, optional: API keys keep working)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca is not None:
        ctx.load_verify_locations(cafile=str(settings.tls_client_ca))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def reload_registry(gw: Gateway) -> bool:
    """SIGHUP: read the registry again (keys, expiries, rights, limits) without a restart.

    Exchanges in flight keep the agency they were admitted as; the next
    request sees the new registry. A registry that does not load is logged
    and the current one stays.
    """
    try:
        registry = Registry.load(gw.settings.registry_path, gw.catalog)
    except RegistryError as exc:
        log.error("gateway worker %d: registry not reloaded, keeping the current one: %s", gw.worker, exc)
        return False
    gw.registry = registry
    gw.limits.reset_rates()
    log.warning("gateway worker %d: registry reloaded from %s", gw.worker, gw.settings.registry_path)
    return True


def _worker_main(settings: Settings, worker: int, ready: Queue[int]) -> None:
    setup_logging(settings.log_level, f"%(asctime)s %(levelname)s gateway[{worker}] %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGTERM
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until serve() handles it: reload, never die
    try:
        uvloop.run(serve(settings, worker=worker, on_ready=lambda: ready.put(worker)))
    except KafkaError as exc:
        log.error("gateway worker %d: cannot use Kafka at %s: %s", worker, settings.kafka_bootstrap, exc)
        sys.exit(1)
    except PartFailed as exc:
        log.critical("gateway worker %d: %s; exiting for a restart", worker, exc)
        sys.exit(1)
    except OSError as exc:  # typically: the port is taken
        log.error("gateway worker %d: cannot listen on %s:%d: %s", worker, settings.host, settings.port, exc)
        sys.exit(1)
    except Exception:
        log.exception("gateway worker %d failed", worker)
        sys.exit(1)
    finally:
        if settings.metrics_dir is not None:
            mark_process_dead(os.getpid(), str(settings.metrics_dir))  # type: ignore[no-untyped-call]


def run_gateway(settings: Settings, progress: Callable[[str], Any] = print) -> int:
    """Run ``settings.workers`` worker processes on one port; return the exit code."""
    if settings.port == 0 and settings.workers > 1:
        raise StartupError("several workers need a fixed --port (SO_REUSEPORT)")
    # Check the catalog and registry here, so that a fault stops start-up with
    # one clear message (CatalogError/RegistryError name the file and the fault).
    Registry.load(settings.registry_path, Catalog.load(settings.schemas_dir))
    metrics_dir: tempfile.TemporaryDirectory[str] | None = None
    if settings.workers > 1 and settings.metrics_dir is None:
        # prometheus-client's multiprocess mode: every worker writes its values to
        # files here and /metrics, answered by any worker, sums them all. The
        # library reads this variable when the (spawned) workers import it.
        metrics_dir = tempfile.TemporaryDirectory(prefix="ndxp-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir.name
        settings = settings.replace(metrics_dir=Path(metrics_dir.name))
    ctx = multiprocessing.get_context("spawn")
    ready: Queue[int] = ctx.Queue()

    def spawn(i: int) -> multiprocessing.process.BaseProcess:
        p = ctx.Process(target=_worker_main, args=(settings, i, ready), name=f"gateway-{i}")
        p.start()
        return p

    procs: list[multiprocessing.process.BaseProcess] = []
    stopping = False

    def forward(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.pid is not None and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()  # SIGTERM: graceful

    def reload(signum: int, _: Any) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGHUP)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
    try:
        procs.extend(spawn(i) for i in range(settings.workers))
        started = 0
        while started < len(procs) and not stopping:
            try:
                ready.get(timeout=0.5)
                started += 1
            except Exception:  # queue.Empty: check that nobody died
                if any(p.exitcode is not None for p in procs):
                    progress("a gateway worker failed to start; see its log above")
                    forward(signal.SIGTERM, None)
                    break
        if started == len(procs):
            scheme = "https" if settings.tls_cert else "http"
            progress(
                f"gateway ready on {scheme}://{settings.host}:{settings.port} with {len(procs)} worker(s)"
            )
        # Supervise: a worker that dies (SIGKILL, a failed Kafka loop) is
        # restarted with the same index, hence the same reply topic, with backoff.
        failures = [0] * len(procs)
        restart_at: list[float | None] = [None] * len(procs)
        while not stopping and any(
            p.is_alive() or r is not None for p, r in zip(procs, restart_at, strict=True)
        ):
            now = time.monotonic()
            for i, p in enumerate(procs):
                if restart_at[i] is not None and now >= (restart_at[i] or 0):
                    restart_at[i] = None
                    procs[i] = spawn(i)
                    progress(f"gateway worker {i} restarted (pid {procs[i].pid})")
                elif restart_at[i] is None and not p.is_alive() and not stopping:
                    if settings.metrics_dir is not None and p.pid is not None:
                        mark_process_dead(p.pid, str(settings.metrics_dir))  # type: ignore[no-untyped-call]
                    wait = min(30.0, 2.0 ** failures[i])
                    failures[i] += 1
                    restart_at[i] = now + wait
                    progress(f"gateway worker {i} exited with {p.exitcode}; restarting in {wait:g}s")
            time.sleep(0.2)
        for p in procs:
            p.join()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if metrics_dir is not None:
            metrics_dir.cleanup()
    codes = [p.exitcode or 0 for p in procs]
    return 0 if all(c == 0 for c in codes) else 1
