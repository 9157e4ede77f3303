"""The gateway's processes: N workers on one port, and the supervisor that keeps them up.

``serve`` runs one worker's app (:func:`broker.gateway.app.create_app`) until
SIGTERM/SIGINT; ``run_gateway`` runs ``settings.workers`` of them on one port
with SO_REUSEPORT, restarts a worker that dies (with backoff, same index,
same reply topic) and the management API beside them, and forwards SIGTERM. On SIGTERM
a worker stops accepting, lets in-flight exchanges finish within the grace
period, flushes, and exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client.multiprocess import mark_process_dead

from broker.errors import PartFailed, StartupError
from broker.gateway import shared
from broker.gateway.app import create_app
from broker.gateway.state import GATEWAY
from broker.kafka import bootstrap
from broker.kafka.registry import seed_documents
from broker.lifecycle import run_until_stopped
from broker.logs import setup_logging
from broker.settings import Settings

log = logging.getLogger(__name__)

STABLE_AFTER_S = 60.0
"""A worker up this long counts as healthy again: if it dies, it is restarted at once."""


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

    def failure() -> str | None:
        parts = [gw.replies, gw.stats, gw.exchanges] + ([gw.follower] if gw.follower is not None else [])
        dead = [s for s in parts if not s.healthy]
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


def _worker_main(settings: Settings, worker: int, ready: Queue[int]) -> None:
    setup_logging(settings.log_level, f"%(asctime)s %(levelname)s gateway[{worker}] %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGTERM
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the registry is live: a hangup changes nothing
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


Beside = Callable[[Settings, "Queue[int]"], None]
"""A process the supervisor runs beside the workers (the management API): it puts -1 on the queue
when it serves."""


def run_gateway(
    settings: Settings, progress: Callable[[str], Any] = print, *, beside: Beside | None = None
) -> int:
    """Run ``settings.workers`` worker processes on one port (and ``beside``, restarted like a
    worker); return the exit code."""
    if settings.port == 0 and settings.workers > 1:
        raise StartupError("several workers need a fixed --port (SO_REUSEPORT)")
    # Faults that stop start-up, named in one line: no Kafka configured, and (when this gateway
    # would seed an empty live registry) a registry file or contract that does not load.
    bootstrap(settings)
    if settings.registry_seed:
        seed_documents(settings)
    # Check the catalog and registry here, so that a fault stops start-up with
    # one clear message (CatalogError/RegistryError name the file and the fault).
    metrics_dir: tempfile.TemporaryDirectory[str] | None = None
    if settings.workers > 1 and settings.metrics_dir is None:
        # prometheus-client's multiprocess mode: every worker writes its values to
        # files here and /metrics, answered by any worker, sums them all. The
        # library reads this variable when the (spawned) workers import it.
        metrics_dir = tempfile.TemporaryDirectory(prefix="ndxp-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir.name
        settings = settings.replace(metrics_dir=Path(metrics_dir.name))
    # The workers share every client's limits (token buckets, in-flight counts) in one file.
    shared_dir: tempfile.TemporaryDirectory[str] | None = None
    if settings.workers > 1 and settings.shared_limits is None:
        shared_dir = tempfile.TemporaryDirectory(prefix="ndxp-limits-")
        settings = settings.replace(shared_limits=shared.create(Path(shared_dir.name) / "limits"))
    ctx = multiprocessing.get_context("spawn")
    ready: Queue[int] = ctx.Queue()

    def spawn(i: int) -> multiprocessing.process.BaseProcess:
        if i == settings.workers:
            assert beside is not None
            p = ctx.Process(target=beside, args=(settings, ready), name="gateway-admin")
        else:
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

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        procs.extend(spawn(i) for i in range(settings.workers + (beside is not None)))
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
            where = f"{scheme}://{settings.host}:{settings.port}"
            progress(f"gateway ready on {where} with {settings.workers} worker(s)")
            if beside is not None:
                progress(f"management API on {scheme}://{settings.admin_host}:{settings.admin_port}/admin/v1")
        # Supervise: a worker that dies (SIGKILL, a failed Kafka loop) is
        # restarted with the same index, hence the same reply topic, with backoff.
        failures = [0] * len(procs)
        up_since = [time.monotonic()] * len(procs)
        restart_at: list[float | None] = [None] * len(procs)
        while not stopping and any(
            p.is_alive() or r is not None for p, r in zip(procs, restart_at, strict=True)
        ):
            now = time.monotonic()
            for i, p in enumerate(procs):
                if restart_at[i] is not None and now >= (restart_at[i] or 0):
                    restart_at[i] = None
                    procs[i] = spawn(i)
                    up_since[i] = now
                    progress(f"{_name(settings, i)} restarted (pid {procs[i].pid})")
                elif restart_at[i] is None and not p.is_alive() and not stopping:
                    if settings.metrics_dir is not None and p.pid is not None:
                        mark_process_dead(p.pid, str(settings.metrics_dir))  # type: ignore[no-untyped-call]
                    # At once the first time, then with a backoff growing while it keeps dying.
                    if now - up_since[i] >= STABLE_AFTER_S:  # it served a while: a fresh start
                        failures[i] = 0
                    wait = 0.0 if failures[i] == 0 else min(30.0, 2.0 ** (failures[i] - 1))
                    failures[i] += 1
                    restart_at[i] = now + wait
                    progress(f"{_name(settings, i)} exited with {p.exitcode}; restarting in {wait:g}s")
            time.sleep(0.2)
        for p in procs:
            p.join()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if metrics_dir is not None:
            metrics_dir.cleanup()
        if shared_dir is not None:
            shared_dir.cleanup()
    codes = [p.exitcode or 0 for p in procs]
    return 0 if all(c == 0 for c in codes) else 1


def _name(settings: Settings, i: int) -> str:
    return "the management API" if i == settings.workers else f"gateway worker {i}"
