"""Run the adapters of simulated agencies until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

from prometheus_client import CollectorRegistry

from adapters.demo.agencies import AGENCIES, handlers_for
from adapters.runtime.adapter import Adapter
from broker.contracts.catalog import Catalog, Effects
from broker.errors import AdapterSetupError
from broker.kafka import Producer, make_producer
from broker.kafka.registry import RegistryFollower, seed_if_empty
from broker.lifecycle import run_until_stopped
from broker.metrics import AdapterMetrics, RegistryMetrics, serve_metrics
from broker.settings import Settings

log = logging.getLogger(__name__)


def build_adapters(
    settings: Settings,
    agencies: Sequence[str],
    metrics: AdapterMetrics,
    resources: AsyncExitStack,
    producer: Producer | None = None,
    catalog: Catalog | None = None,
) -> list[Adapter]:
    """One adapter per agency; ``producer``: a started producer all of them share for lookup replies;
    ``catalog``: the contracts (default: the schemas folder's; ``ndxp adapter``: the live registry's)."""
    catalog = catalog if catalog is not None else Catalog.load(settings.schemas_dir)
    adapters = []
    for agency in agencies:
        if agency not in AGENCIES:
            raise AdapterSetupError(f"no simulated agency {agency!r}; known: {', '.join(sorted(AGENCIES))}")
        handlers = handlers_for(agency, settings, resources)
        contracted = {s.service for s in catalog.of_provider(agency)}
        if not set(handlers) <= contracted:
            raise AdapterSetupError(
                f"{agency}: handlers {sorted(set(handlers) - contracted)} have no contract in the registry "
                f"(its services: {sorted(contracted)})"
            )
        unserved = contracted - set(handlers)
        if unserved:
            log.warning("%s: no handler here for %s (a bound service's generic adapter, or another "
                        "adapter, must serve them)", agency, sorted(unserved))  # fmt: skip
        writes = [s.service for s in catalog.of_provider(agency) if s.effects is Effects.WRITE]
        adapters.append(
            Adapter(settings, agency, handlers, writes=writes, metrics=metrics, producer=producer)
        )
    return adapters


async def run_adapters(
    settings: Settings, agencies: Sequence[str], progress: Callable[[str], Any] = print
) -> None:
    """Serve ``agencies`` until SIGTERM/SIGINT; stop cleanly (commit, leave the group)."""
    metrics = AdapterMetrics(CollectorRegistry())
    async with AsyncExitStack() as resources:
        # The contracts as the live registry has them (read to the end before anything serves).
        follower = RegistryFollower(
            settings, part="adapters", metrics=RegistryMetrics(metrics.registry, "adapters")
        )
        await follower.start()
        resources.push_async_callback(follower.stop)
        if settings.registry_seed:
            await seed_if_empty(settings, follower)
            await follower.caught_up()
        # One producer for every agency's replies: they go to the same reply
        # topics, so one producer sends them in fewer, bigger requests.
        producer = make_producer(settings, client_id="ndxp-adapters")
        await producer.start()
        resources.push_async_callback(producer.stop)
        adapters = build_adapters(settings, agencies, metrics, resources, producer, follower.live.catalog)
        noted = {
            f"{a.provider}/{s.service}"
            for a in adapters
            for s in follower.live.catalog.of_provider(a.provider)
        }
        follower.listeners.append(lambda _: _warn_unserved(follower.live.catalog, adapters, noted))
        if settings.metrics_port:
            runner = await serve_metrics(
                metrics.registry,
                settings.internal_host,
                settings.metrics_port,
                ready=lambda: follower.healthy and all(a.assigned.is_set() and a.healthy for a in adapters),
            )
            resources.push_async_callback(runner.cleanup)
            progress(f"adapter metrics on http://{settings.internal_host}:{settings.metrics_port}/metrics")
        await _serve(adapters, progress)


def _warn_unserved(catalog: Catalog, adapters: Sequence[Adapter], noted: set[str]) -> None:
    """A service published (through the management API) for an agency served here, with no handler."""
    for adapter in adapters:
        for svc in catalog.of_provider(adapter.provider):
            if svc.service not in adapter.handlers and svc.key not in noted:
                noted.add(svc.key)
                log.warning("%s was published, but no handler here serves it", svc.key)


async def _serve(adapters: list[Adapter], progress: Callable[[str], Any]) -> None:
    started: list[Adapter] = []
    try:
        for adapter in adapters:
            await adapter.start()
            started.append(adapter)
        await asyncio.gather(*(a.wait_assigned(within_s=120) for a in adapters))
        progress(f"adapters serving: {', '.join(a.provider for a in adapters)}")

        def failure() -> str | None:
            dead = [a for a in adapters if not a.healthy]
            return f"{dead[0].what} stopped: {dead[0].failed!r}" if dead else None

        await run_until_stopped(failure)
        progress("adapters stopping")
    finally:
        await asyncio.gather(*(a.stop() for a in started), return_exceptions=True)
