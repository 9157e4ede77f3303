"""Run the counter until SIGTERM/SIGINT, with its /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from broker.counter.counter import TxCounter
from broker.lifecycle import run_service
from broker.metrics import CounterMetrics
from broker.settings import Settings


async def run_counter(settings: Settings, progress: Callable[[str], Any] = print) -> None:
    metrics = CounterMetrics(CollectorRegistry())
    started = f"counter counting {settings.tx_topic} into {settings.stats_topic}"
    await run_service(TxCounter(settings, metrics), metrics.registry, settings, started, progress)
