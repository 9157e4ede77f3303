"""The gateway application: one worker's aiohttp app.

``create_app(settings)`` builds it: routes, the request-id and problem
middlewares, and one cleanup context per resource (Kafka producer,
transaction recorder, reply router, stats view, exchange view), entered in
order and exited in reverse. The processes that run it are
:mod:`broker.gateway.workers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable

from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from broker.contracts.catalog import Catalog
from broker.contracts.registry import Registry
from broker.counter.stats import StatsView
from broker.gateway import audit, events, meta
from broker.gateway.exchange import exchange
from broker.gateway.limits import Limits
from broker.gateway.middleware import problems, server_header
from broker.gateway.presence import Presence
from broker.gateway.recorder import TxRecorder
from broker.gateway.replies import ReplyRouter
from broker.gateway.shared import SharedLimits
from broker.gateway.state import GATEWAY, Gateway
from broker.gateway.stored import get_exchange
from broker.gateway.view import ExchangeView
from broker.kafka import (
    Reachability,
    StickyPartitioner,
    Topics,
    delete_topics,
    ensure_topics,
    make_producer,
    metadata_client,
)
from broker.kafka.registry import RegistryFollower, seed_if_empty
from broker.kafka.routing import LeaderWatch
from broker.logs import redact_aiohttp
from broker.metrics import GatewayMetrics, RegistryMetrics
from broker.model.envelope import H_HEARTBEAT
from broker.settings import Settings

log = logging.getLogger(__name__)
_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def worker_reply_topic(settings: Settings, worker: int) -> str:
    return settings.names.reply(_TOPIC_UNSAFE.sub("_", f"{settings.instance_id}-w{worker}"))


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


REPLY_TOPIC_HEARTBEAT_S = 600.0
"""How often a worker writes "still here" to its reply topic (the keeper deletes reply topics idle
for ``NDXP_REPLY_TOPIC_IDLE_HOURS``: those of workers that were killed and never came back)."""


async def _heartbeat(gw: Gateway) -> None:
    while True:
        try:
            await gw.producer.send(gw.replies.topic, b"", headers=[(H_HEARTBEAT, b"1")])
        except KafkaError as exc:
            log.warning("reply topic heartbeat not sent: %s", exc)
        await asyncio.sleep(REPLY_TOPIC_HEARTBEAT_S)


def create_app(
    settings: Settings,
    *,
    worker: int = 0,
    catalog: Catalog | None = None,
    registry: Registry | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> web.Application:
    """One gateway worker's application.

    It follows the live registry (agencies, keys, rights, service versions) unless it is given a
    fixed ``registry`` (with its catalog): a test's, or a tool's.
    """
    redact_aiohttp()  # a request aiohttp cannot parse is logged with its raw headers: keys redacted
    collector = metrics_registry or CollectorRegistry()
    follower = None
    if registry is None:
        follower = RegistryFollower(settings, part="gateway", metrics=RegistryMetrics(collector, "gateway"))
        registry = follower.live.registry
    catalog = catalog if catalog is not None else registry.catalog
    metrics = GatewayMetrics(collector)
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
            max_long_polls=settings.max_long_polls,
            shared=SharedLimits(settings.shared_limits, worker) if settings.shared_limits else None,
        ),
        replies=ReplyRouter(settings, worker_reply_topic(settings, worker), metrics),
        recorder=TxRecorder(settings.tx_topic, metrics, within_s=settings.kafka_send_within_s),
        stats=StatsView(settings),
        exchanges=ExchangeView(settings, metrics.view_bytes),
        worker=worker,
    )
    app = web.Application(middlewares=[problems], client_max_size=settings.max_body_bytes)
    app.on_response_prepare.append(server_header)
    app[GATEWAY] = gw
    gw.follower = follower

    async def live_registry(app: web.Application) -> AsyncIterator[None]:
        # Before anything serves: the whole registry is read (keys, rights, services).
        assert follower is not None
        await follower.start()
        # One seeder per instance beside the admin (the writer makes it once anyway): fewer fencings.
        if settings.registry_seed and worker == 0 and await seed_if_empty(settings, follower):
            log.warning("the live registry was empty: imported %s and %s", settings.registry_path,
                        settings.schemas_dir)  # fmt: skip
        # A changed rate limit applies at once, and only to its agency.
        follower.listeners.append(
            lambda changed: gw.limits.reset_rates(e.id for e in changed if e.kind == "agency")
        )
        yield
        await _bounded(follower.stop(), settings.shutdown_grace_s, "registry follower")

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
        probe = metadata_client(settings, f"ndxp-gateway-{worker}-probe")
        try:
            await probe.bootstrap()
        except BaseException:
            await probe.close()
            await gw.producer.stop()
            raise
        gw.kafka = Reachability(gw.producer, probe=probe)
        gw.kafka.start()
        gw.leaders = LeaderWatch(gw.producer)
        # The live gateway instances, for each to take its share of a client's limits.
        presence = Presence(settings, gw.limits)
        await presence.start()
        presence.start_beating(gw.producer)
        yield
        # Bounded like every stop here: with Kafka gone, its consumer's stop can wait or fail.
        await _bounded(presence.leave(), settings.shutdown_grace_s, "presence")
        await gw.kafka.stop()
        # Flushes what is still batched, but never waits past the grace period (Kafka may be gone).
        await _bounded(gw.producer.stop(), settings.shutdown_grace_s, "producer")

    async def tx_recorder(app: web.Application) -> AsyncIterator[None]:
        # Request topics too: an async exchange is accepted while its provider has never run.
        topics = Topics(settings)
        requests = [spec for provider in catalog.providers() for spec in topics.requests(provider)]
        await ensure_topics(settings, [topics.tx(), *requests, *topics.events(catalog)])
        gw.recorder.start(gw.producer, gw.leaders)
        yield
        await _bounded(gw.recorder.stop(settings.shutdown_grace_s), settings.shutdown_grace_s, "recorder")

    async def reply_router(app: web.Application) -> AsyncIterator[None]:
        await gw.replies.start()
        beat = asyncio.create_task(_heartbeat(gw), name="reply topic heartbeat")
        yield
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
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

    if follower is not None:
        app.cleanup_ctx.append(live_registry)
    app.cleanup_ctx.extend([kafka_producer, tx_recorder, reply_router, stats_view, exchange_view])
    app.router.add_post("/v1/exchange/{provider}/{service}", exchange)
    app.router.add_post("/v1/exchange/{provider}/{service}/v{major:[1-9][0-9]{0,5}}", exchange)
    app.router.add_get("/v1/exchanges/{exchange_id}", get_exchange)
    app.router.add_get("/v1/events", events.list_events)
    app.router.add_post("/v1/events/{provider}/{type}", events.publish)
    app.router.add_get("/v1/events/{provider}/{type}", events.subscribe)

    async def end_streams(app: web.Application) -> None:
        for stream in list(gw.streams):
            stream.stopping.set()  # each ends within a poll (1 s), committing its position

    app.on_shutdown.append(end_streams)
    audit.add_routes(app)
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
