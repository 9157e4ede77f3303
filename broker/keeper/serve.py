"""Run the exchange keeper until SIGTERM/SIGINT, with its /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from broker.contracts.catalog import Catalog
from broker.contracts.registry import Registry
from broker.keeper.keeper import ExchangeKeeper
from broker.lifecycle import run_service
from broker.metrics import KeeperMetrics
from broker.settings import Settings


async def run_keeper(settings: Settings, progress: Callable[[str], Any] = print) -> None:
    catalog = Catalog.load(settings.schemas_dir)
    registry = Registry.load(settings.registry_path, catalog)
    metrics = KeeperMetrics(CollectorRegistry())
    keeper = ExchangeKeeper(settings, catalog, registry, metrics)
    started = f"keeper finishing stored exchanges of {settings.exchanges_topic}"
    await run_service(keeper, metrics.registry, settings, started, progress)
