"""Running a part until it is told to stop, and noticing when it cannot go on.

Every long-running part (gateway worker, adapters, counter) waits here for
SIGTERM/SIGINT. Meanwhile it checks, every second, that its Kafka loops are
still running: a loop that died would leave the part up but useless (an
adapter answering nothing, a gateway whose replies never arrive), so the
part raises :class:`PartFailed` and its process exits non-zero, for its
supervisor (``ndxp up``, ``ndxp gateway``, or the orchestrator) to restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from broker.errors import PartFailed

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from broker.kafka import KafkaService
    from broker.settings import Settings


def sigterm_as_exit() -> None:
    """Make SIGTERM unwind a synchronous script like Ctrl-C does (its ``finally`` blocks run).

    For the scripts that start Kafka and the platform themselves (benchmarks,
    the fault suite): stopped by an operator or a CI timeout, they stop what
    they started instead of leaving it running.
    """

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def on_stop_signal(callback: Callable[[], object]) -> Iterator[None]:
    """Within the block, SIGTERM or SIGINT calls ``callback`` (in the running event loop).

    The one place an async part learns it is told to stop: the parts
    (gateway worker, adapters, counter, keeper), the land backend, the
    change feed.
    """
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, callback)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def run_until_stopped(failure: Callable[[], str | None], check_every_s: float = 1.0) -> None:
    """Return on SIGTERM or SIGINT; raise PartFailed as soon as ``failure()`` names one."""
    stop = asyncio.Event()
    with on_stop_signal(stop.set):
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(check_every_s):
                    await stop.wait()
            reason = None if stop.is_set() else failure()
            if reason is not None:
                raise PartFailed(reason)


async def run_service(
    service: KafkaService,
    registry: CollectorRegistry,
    settings: Settings,
    started: str,
    progress: Callable[[str], Any] = print,
) -> None:
    """Run one Kafka service with its ``/metrics`` until SIGTERM/SIGINT (the counter, the keeper)."""
    from broker.metrics import serve_metrics

    runner = None
    try:
        await service.start()
        if settings.metrics_port:
            runner = await serve_metrics(
                registry, settings.internal_host, settings.metrics_port, ready=lambda: service.healthy
            )
        progress(started + (f"; metrics on :{settings.metrics_port}" if settings.metrics_port else ""))
        await run_until_stopped(
            lambda: None if service.healthy else f"{service.what} stopped: {service.failed!r}"
        )
        progress(f"{service.what} stopping")
    finally:
        await service.stop()
        if runner is not None:
            await runner.cleanup()
