"""KafkaService, the base of every part that runs a poll loop, and Kafka's reachability."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from broker.kafka.boundary import Batch, Consumer, Producer
from broker.kafka.clients import poll

log = logging.getLogger(__name__)


async def _await_cancelled(task: asyncio.Task[None]) -> None:
    """Await a task we may have cancelled; its CancelledError is swallowed, ours is not."""
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


class KafkaService:
    """Base of every part that runs one Kafka poll loop (adapter, counter, reply router, stats view).

    ``start()`` and ``stop()`` are idempotent and the service is an async
    context manager. Subclasses open their clients in ``_open()`` (setting
    ``self.consumer``), handle each polled batch in ``_on_batch()``, and
    close in ``_close()``. A loop that dies of an unexpected error is
    logged, recorded in ``failed`` and reported by ``healthy``; it never
    dies silently.

    Helper tasks (a committer, a write lane) are started with :meth:`spawn`:
    the service owns them. One that ends while the service runs makes
    ``healthy`` False (and its error is ``failed``); ``stop()`` cancels and
    awaits every one of them after ``_close()`` has finished its work.
    """

    poll_timeout_ms = 200
    cancel_on_stop = False
    """True for followers that hold nothing to finish: stop cancels the loop at once."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.consumer: Consumer | None = None
        self.failed: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._helpers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._running = False

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def healthy(self) -> bool:
        """Started, and its loop and every helper task still running."""
        return self._task is not None and not self._task.done() and not any(h.done() for h in self._helpers)

    @property
    def helpers(self) -> int:
        """Helper tasks running now."""
        return sum(not h.done() for h in self._helpers)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Start a helper task owned by this service (see the class docstring)."""
        task = asyncio.create_task(coro, name=f"{self.what}: {name}")
        task.add_done_callback(self._helper_done)
        self._helpers.append(task)
        return task

    def _helper_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping.is_set():
            return
        exc = task.exception()
        if self.failed is None:
            self.failed = exc or RuntimeError(f"{task.get_name()} ended")
        log.critical("%s ended while the service runs", task.get_name(), exc_info=exc)

    def request_stop(self, failed: BaseException | None = None) -> None:
        """Ask the poll loop to end (``failed``: why the service cannot go on)."""
        if failed is not None and self.failed is None:
            self.failed = failed
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._stopping.clear()
        self.failed = None
        try:
            await self._open()
        except BaseException:
            await self._close()
            self._running = False
            raise
        self._task = asyncio.create_task(self._loop(), name=self.what)

    async def stop(self) -> None:
        if not self._running:
            return
        self._stopping.set()
        if self._task is not None:
            if self.cancel_on_stop:
                self._task.cancel()
            await _await_cancelled(self._task)
            self._task = None
        try:
            await self._close()
        finally:
            await self._stop_helpers()
            self._running = False

    async def _stop_helpers(self) -> None:
        """Cancel and await every helper task (``_close()`` may call it where its order matters)."""
        helpers, self._helpers = self._helpers, []
        for helper in helpers:
            helper.cancel()
        for helper in helpers:
            with contextlib.suppress(Exception):  # its error is already in ``failed`` and the log
                await _await_cancelled(helper)

    async def _loop(self) -> None:
        assert self.consumer is not None
        try:
            while not self._stopping.is_set():
                limit = await self._capacity()
                if self._stopping.is_set():
                    break
                batch = await poll(self.consumer, self.what, self.poll_timeout_ms, max_records=limit)
                await self._on_batch(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed = exc
            log.critical("%s stopped on an unexpected error", self.what, exc_info=True)
            self._on_failure(exc)

    async def _capacity(self) -> int | None:
        """How many records the next poll may return (waits for room); None: no limit."""
        return None

    def _on_failure(self, exc: BaseException) -> None:
        """Called once when the loop dies (default: nothing more than the log and ``healthy``)."""

    async def _open(self) -> None:
        raise NotImplementedError

    async def _on_batch(self, batch: Batch) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None


class Reachability:
    """Whether Kafka answers, as seen through one producer's connections.

    Every ``interval_s`` it asks the cluster for its metadata; two failures in
    a row (no answer within ``timeout_s``) make ``ok`` False until an answer
    comes again. The gateway uses it to answer 503 at once instead of letting
    callers wait for a timeout, and for ``/readyz``.

    With ``probe`` (a started client of its own, closed with this) it asks over its own
    connections, not the producer's: while a lost broker is being fenced, the producer's
    connections to the live brokers each hold an acks=all write that waits for the fencing, and a
    metadata request sent behind it (Kafka answers a connection's requests in order) would wait
    as long and time out, as though Kafka were gone.
    """

    def __init__(
        self, producer: Producer, *, interval_s: float = 1.0, timeout_s: float = 2.0, probe: Any = None
    ) -> None:
        self.producer = producer
        self.probe = probe
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.ok = True
        self.last_error = ""
        self._failures = 0
        self._last_success = 0.0
        self._task: asyncio.Task[None] | None = None

    def saw_success(self) -> None:
        """Kafka just acknowledged a write: it is reachable, whatever one broker's metadata says."""
        self._last_success = time.monotonic()
        if not self.ok:
            log.warning("Kafka reachable again")
            self.ok = True
            self._failures = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kafka reachability")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await _await_cancelled(self._task)
            self._task = None
        if self.probe is not None:
            await self.probe.close()

    async def _run(self) -> None:
        client = self.probe if self.probe is not None else self.producer.client
        while True:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await client.fetch_all_metadata()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - self._last_success < 2 * self.interval_s + self.timeout_s:
                    # One slow or paused broker: writes to the others still succeed.
                    await asyncio.sleep(self.interval_s)
                    continue
                self._failures += 1
                self.last_error = str(exc) or type(exc).__name__
                if self._failures >= 2 and self.ok:
                    log.error("Kafka unreachable: %s; answering 503 until it is back", self.last_error)
                    self.ok = False
            else:
                if not self.ok:
                    log.warning("Kafka reachable again")
                self._failures = 0
                self.ok = True
            await asyncio.sleep(self.interval_s)
