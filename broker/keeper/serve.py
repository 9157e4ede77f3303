"""Run the exchange keeper until SIGTERM/SIGINT, with its /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from broker.kafka.registry import RegistryFollower
from broker.keeper.keeper import ExchangeKeeper
from broker.lifecycle import run_service
from broker.metrics import KeeperMetrics, RegistryMetrics
from broker.settings import Settings


async def run_keeper(settings: Settings, progress: Callable[[str], Any] = print) -> None:
    metrics = KeeperMetrics(CollectorRegistry())
    follower = RegistryFollower(settings, part="keeper", metrics=RegistryMetrics(metrics.registry, "keeper"))
    live = follower.live
    keeper = ExchangeKeeper(settings, live.catalog, live.registry, metrics, follower)
    started = f"keeper finishing stored exchanges of {settings.exchanges_topic}"
    await run_service(keeper, metrics.registry, settings, started, progress)
