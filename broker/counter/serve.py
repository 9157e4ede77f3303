"""Run the counter until SIGTERM/SIGINT, with its /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from broker.counter.counter import TxCounter
from broker.lifecycle import run_until_stopped
from broker.metrics import CounterMetrics, serve_metrics
from broker.settings import Settings


async def run_counter(settings: Settings, progress: Callable[[str], Any] = print) -> None:
    metrics = CounterMetrics(CollectorRegistry())
    counter = TxCounter(settings, metrics)
    runner = None
    try:
        await counter.start()
        if settings.metrics_port:
            runner = await serve_metrics(
                metrics.registry, settings.internal_host, settings.metrics_port, ready=lambda: counter.healthy
            )
        progress(
            f"counter counting {settings.tx_topic} into {settings.stats_topic}"
            + (f"; metrics on :{settings.metrics_port}" if settings.metrics_port else "")
        )
        await run_until_stopped(lambda: None if counter.healthy else f"counter stopped: {counter.failed!r}")
        progress("counter stopping")
    finally:
        await counter.stop()
        if runner is not None:
            await runner.cleanup()
