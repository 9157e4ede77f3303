"""Run the adapters of simulated agencies until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from adapters.demo.agencies import AGENCIES, handlers_for, known
from adapters.runtime.adapter import Adapter
from adapters.runtime.bindings import Bindings
from broker.contracts.catalog import Catalog, Effects
from broker.contracts.registry import Registry
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
    bound: Mapping[str, Bindings] | None = None,
) -> list[Adapter]:
    """One adapter per agency; ``producer``: a started producer all of them share for lookup replies;
    ``catalog``: the contracts (default: the schemas folder's; ``ndxp adapter``: the live registry's);
    ``bound``: per provider, its bound services (served by their bindings, no code)."""
    catalog = catalog if catalog is not None else Catalog.load(settings.schemas_dir)
    bound = bound or {}
    adapters = []
    for agency in agencies:
        if not known(agency) and not (agency in bound and bound[agency].handlers):
            raise AdapterSetupError(
                f"no handlers for {agency!r} (simulated: {', '.join(sorted(AGENCIES))}; or an installed "
                "package's ndxp.agencies entry point) and no bound service of it"
            )
        handlers = dict(handlers_for(agency, settings, resources)) if known(agency) else {}
        contracted = {s.service for s in catalog.of_provider(agency)}
        if not set(handlers) <= contracted:
            raise AdapterSetupError(
                f"{agency}: handlers {sorted(set(handlers) - contracted)} have no contract in the registry "
                f"(its services: {sorted(contracted)})"
            )
        if agency in bound:
            handlers.update(bound[agency].handlers)  # a service with a binding is served by it
        unserved = contracted - set(handlers)
        if unserved:
            log.warning("%s: nothing here serves %s (a binding that is not served, or another "
                        "adapter's)", agency, sorted(unserved))  # fmt: skip
        writes = [s.service for s in catalog.of_provider(agency) if s.effects is Effects.WRITE]
        adapters.append(
            Adapter(settings, agency, handlers, writes=writes, metrics=metrics, producer=producer)
        )
    return adapters


def bound_providers(catalog: Catalog, registry: Registry | None = None) -> list[str]:
    """Providers with a bound service (a version with a binding), but those that run their own
    adapter (``own_adapter`` in the registry: they serve their bindings themselves)."""
    own = {a.id for a in registry if a.own_adapter} if registry is not None else set()
    return sorted({s.provider for s in catalog.versions() if s.binding is not None} - own)


async def run_adapters(
    settings: Settings,
    agencies: Sequence[str],
    progress: Callable[[str], Any] = print,
    *,
    every_bound: bool = False,
    contracts: Path | None = None,
) -> None:
    """Serve ``agencies`` (their code handlers and bound services) until SIGTERM/SIGINT; stop cleanly
    (commit, leave the group). ``every_bound``: also every provider with a bound service, now and
    as they are published. ``contracts``: a member's adapter, with its own Kafka user that may not
    read the registry, takes its contracts from these files (as published), not the live registry."""
    metrics = AdapterMetrics(CollectorRegistry())
    async with AsyncExitStack() as resources:
        follower: RegistryFollower | None = None
        registry: Registry | None = None
        if contracts is not None:
            catalog = Catalog.load(contracts)
        else:
            # The contracts as the live registry has them (read to the end before anything serves).
            follower = RegistryFollower(
                settings, part="adapters", metrics=RegistryMetrics(metrics.registry, "adapters")
            )
            await follower.start()
            resources.push_async_callback(follower.stop)
            if settings.registry_seed:
                await seed_if_empty(settings, follower)
                await follower.caught_up()
            catalog, registry = follower.live.catalog, follower.live.registry
        # One producer for every agency's replies: they go to the same reply
        # topics, so one producer sends them in fewer, bigger requests.
        producer = make_producer(settings, client_id="ndxp-adapters")
        resources.push_async_callback(producer.stop)  # also when it cannot start (wrong credentials)
        await producer.start()
        served = list(
            dict.fromkeys([*agencies, *(bound_providers(catalog, registry) if every_bound else [])])
        )
        bound: dict[str, Bindings] = {}
        for provider in served:
            bound[provider] = Bindings(provider, catalog, settings)
            resources.push_async_callback(bound[provider].close)
            await bound[provider].sync()
        adapters = build_adapters(settings, served, metrics, resources, producer, catalog, bound)
        code = {a.provider: {k: v for k, v in a.handlers.items() if k not in bound[a.provider].handlers}
                for a in adapters}  # fmt: skip
        noted = {f"{a.provider}/{s.service}" for a in adapters for s in catalog.of_provider(a.provider)}

        async def follow() -> None:
            """A binding published, changed or withdrawn; with ``every_bound``, a new bound provider."""
            for provider in bound_providers(catalog, registry) if every_bound else []:
                if provider not in bound:
                    bound[provider] = Bindings(provider, catalog, settings)
                    resources.push_async_callback(bound[provider].close)
                    code[provider] = {}
                    new = Adapter(settings, provider, {}, writes=[], metrics=metrics, producer=producer)
                    await new.start()
                    resources.push_async_callback(new.stop)
                    adapters.append(new)
                    progress(f"adapter for {provider} started (a bound service was published)")
            named = set(agencies)
            own = {a.id for a in registry if a.own_adapter} if registry is not None else set()
            for adapter in adapters:
                bindings = bound[adapter.provider]
                await bindings.sync()
                handlers = {**code[adapter.provider], **bindings.handlers}
                if adapter.provider in own and adapter.provider not in named:
                    handlers = {}  # it runs its own adapter now: its partitions go to that one
                if handlers != adapter.handlers:
                    await adapter.update(handlers)
            _warn_unserved(catalog, [a for a in adapters if a.handlers], noted)

        if follower is not None:
            refresh = _Refresh(follow)
            follower.listeners.append(lambda _: refresh.kick())
            resources.push_async_callback(refresh.stop)
        if settings.metrics_port:
            runner = await serve_metrics(
                metrics.registry,
                settings.internal_host,
                settings.metrics_port,
                ready=lambda: (
                    (follower is None or follower.healthy)
                    and all(a.assigned.is_set() and a.healthy for a in adapters)
                ),
            )
            resources.push_async_callback(runner.cleanup)
            progress(f"adapter metrics on http://{settings.internal_host}:{settings.metrics_port}/metrics")
        await serve_until_stopped(adapters, progress)


class _Refresh:
    """Runs ``work`` after a registry change, one run at a time; changes during a run make one more."""

    def __init__(self, work: Callable[[], Awaitable[None]]) -> None:
        self.work = work
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def kick(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self.work()
            except Exception:
                log.exception("following the registry's bindings failed; the next change retries")
            if not self._again:
                return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _warn_unserved(catalog: Catalog, adapters: Sequence[Adapter], noted: set[str]) -> None:
    """A service published (through the management API) for an agency served here, with no handler."""
    for adapter in adapters:
        for svc in catalog.of_provider(adapter.provider):
            if svc.service not in adapter.handlers and svc.key not in noted:
                noted.add(svc.key)
                log.warning("%s was published, but nothing here serves it", svc.key)


async def serve_until_stopped(adapters: list[Adapter], progress: Callable[[str], Any] = print) -> None:
    """Start ``adapters``, wait until each has its partitions, serve until SIGTERM/SIGINT, stop them."""
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
