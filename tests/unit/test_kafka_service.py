"""KafkaService owns its helper tasks: started with it, counted in ``healthy``, cancelled and awaited
when it stops (against the in-memory fake: no Kafka needed)."""

from __future__ import annotations

import asyncio

from broker.kafka import Batch, KafkaService
from tests.fakes import FakeKafka


class WithHelpers(KafkaService):
    poll_timeout_ms = 20

    def __init__(self) -> None:
        super().__init__("with helpers")
        self.fail = asyncio.Event()
        self.stopped_cleanly = False

    async def _open(self) -> None:
        self.consumer = FakeKafka().consumer("t")
        await self.consumer.start()
        self.spawn(self._fragile(), "fragile")
        self.spawn(self._forever(), "forever")

    async def _on_batch(self, batch: Batch) -> None:
        return None

    async def _fragile(self) -> None:
        await self.fail.wait()
        raise RuntimeError("the helper died")

    async def _forever(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.stopped_cleanly = True
            raise


async def test_a_dead_helper_makes_the_service_unhealthy_and_stop_awaits_every_helper() -> None:
    service = WithHelpers()
    async with service:
        assert service.healthy
        assert service.helpers == 2
        service.fail.set()
        async with asyncio.timeout(5):
            while service.failed is None:
                await asyncio.sleep(0)
        assert not service.healthy
        assert isinstance(service.failed, RuntimeError), "its error is the service's failure"
        assert service.helpers == 1
    assert service.helpers == 0
    assert service.stopped_cleanly, "a helper still running is cancelled and awaited, not abandoned"
    assert not service.healthy


async def test_request_stop_ends_the_loop_with_its_reason() -> None:
    service = WithHelpers()
    await service.start()
    reason = RuntimeError("fenced")
    service.request_stop(reason)
    async with asyncio.timeout(5):
        while service.healthy:
            await asyncio.sleep(0.01)
    assert service.failed is reason
    await service.stop()
    await service.stop()  # idempotent
    assert service.helpers == 0
