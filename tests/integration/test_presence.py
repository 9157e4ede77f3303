"""Gateway instances see each other through Kafka, so that each takes its share of a client's limits.

A client at 150% of its limit through two instances gets its limit, not twice it: each instance
hears the other's beats and halves the client's rate (the arithmetic of the halving is in
``tests/unit/test_shared_limits.py``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest

from broker.contracts.registry import Agency
from broker.errors import RateLimited
from broker.gateway.limits import Limits
from broker.gateway.presence import EXPIRY_S, Presence
from broker.kafka import Producer, make_producer
from broker.settings import Settings

pytestmark = pytest.mark.kafka


async def _until(check: Callable[[], bool], within_s: float) -> float:
    started = time.monotonic()
    async with asyncio.timeout(within_s):
        while not check():
            await asyncio.sleep(0.1)
    return time.monotonic() - started


async def _instance(settings: Settings, name: str) -> tuple[Presence, Limits, Producer]:
    limits = Limits(default_rate=1000, max_in_flight=100)
    mine = settings.replace(instance_id=name)
    producer = make_producer(mine, client_id=f"test-{name}")
    await producer.start()
    presence = Presence(mine, limits)
    await presence.start()
    presence.start_beating(producer)
    return presence, limits, producer


async def test_two_instances_split_a_clients_rate_and_one_leaving_gives_it_back(settings: Settings) -> None:
    settings = settings.replace(registry_topic=f"{settings.registry_topic}.p{uuid.uuid4().hex[:8]}")
    a, limits_a, producer_a = await _instance(settings, "gw-a")
    b, limits_b, producer_b = await _instance(settings, "gw-b")
    try:
        took = await _until(lambda: limits_a.instances == 2 and limits_b.instances == 2, within_s=15)
        print(f"both instances counted within {took:.1f}s")
        client = Agency(id="vcb", code="VCB", name="Vietcombank", rate_limit=20.0)
        # 30 calls at once (150% of a second's worth), spread over the two: 20 granted, not 40.
        granted = 0
        for limits in [limits_a, limits_b] * 15:
            try:
                limits.charge(client)
                granted += 1
            except RateLimited:
                pass
        assert granted == 20, granted

        await b.leave()  # a graceful stop says so: the other takes the whole limit at once
        await _until(lambda: limits_a.instances == 1, within_s=5)
        c, limits_c, producer_c = await _instance(settings, "gw-c")
        await _until(lambda: limits_a.instances == 2 and limits_c.instances == 2, within_s=15)
        await c.stop()  # a killed instance says nothing: it stops counting after EXPIRY_S
        quiet = await _until(lambda: limits_a.instances == 1, within_s=EXPIRY_S + 5)
        print(f"a silent instance stopped counting after {quiet:.1f}s")
        await producer_c.stop()
    finally:
        await a.stop()
        await b.stop()
        for p in (producer_a, producer_b):
            await p.stop()
