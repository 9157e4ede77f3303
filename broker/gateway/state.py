"""What one gateway worker holds, and the typed keys to reach it from handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError

from broker.contracts.catalog import Catalog
from broker.contracts.registry import Registry
from broker.counter.stats import StatsView
from broker.errors import Unavailable
from broker.gateway.limits import Limits
from broker.gateway.recorder import TxRecorder
from broker.gateway.replies import ReplyRouter
from broker.gateway.view import ExchangeView
from broker.kafka import Producer, Reachability, Written
from broker.kafka.routing import LeaderWatch
from broker.metrics import GatewayMetrics
from broker.settings import Settings


@dataclass(slots=True, kw_only=True)
class Gateway:
    """The parts of a gateway worker; the producer and router start with the app."""

    settings: Settings
    catalog: Catalog
    registry: Registry
    metrics: GatewayMetrics
    limits: Limits
    replies: ReplyRouter
    recorder: TxRecorder
    stats: StatsView
    exchanges: ExchangeView
    """Stored exchanges (async, idempotent), as read from the exchanges topic."""
    worker: int = 0
    streams: set[Any] = field(default_factory=set)
    """Open event streams (Server-Sent Events); told to end when the worker stops."""
    follower: Any = None
    """The live registry's follower (None when the registry is fixed: a test's)."""
    producer: Producer = field(init=False)
    """Set when the app starts (it needs the running loop)."""
    kafka: Reachability = field(init=False)
    """Whether Kafka answers; set with the producer."""
    leaders: LeaderWatch = field(init=False)
    """The standing of each partition leader, as this worker's sends see it; set with the producer."""

    async def hand_off(
        self,
        topic: str,
        value: bytes,
        *,
        what: str,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        at_most_s: float | None = None,
        hedge: bool = False,
        if_late: Callable[[], Awaitable[object]] | None = None,
    ) -> Written:
        """Hand ``value`` to Kafka and wait for its acknowledgement (acks=all).

        The one place where the gateway turns Kafka's refusal or silence into
        an answer: :class:`Unavailable` (503, ``Retry-After: 1``) if Kafka
        refuses ``what`` or does not acknowledge it within ``settings.kafka_send_within_s``
        (or ``at_most_s``, if shorter). A record with no key and no partition goes to a partition
        whose leader answers (``hedge``: and, held up, once more to another; only for what is read
        once by id, see :mod:`broker.kafka.routing`).

        A keyed record answered 503 for want of an acknowledgement may still reach Kafka: the producer
        keeps it and sends it again. ``if_late`` is then run once Kafka acknowledges it (by the
        recorder, which owns what outlives the request): a publication is counted if it happened.
        """
        limit = self.settings.kafka_send_within_s
        within_s = limit if at_most_s is None else min(at_most_s, limit)
        delivery: asyncio.Future[Written] | None = None
        try:
            async with asyncio.timeout(within_s):
                if key is None and partition is None and hedge:
                    written = await self.leaders.hedged(topic, value, headers=headers)
                elif key is None and partition is None:
                    written = await (await self.leaders.send(topic, value, headers=headers))
                else:
                    delivery = await self.producer.send(
                        topic, value, key=key, partition=partition, headers=headers
                    )
                    written = await (delivery if if_late is None else asyncio.shield(delivery))
        except TimeoutError as exc:
            maybe = ""
            if delivery is not None and if_late is not None:
                self.recorder.when_delivered(delivery, if_late)
                maybe = " (it may still be taken, and counted, once Kafka is back)"
            detail = f"Kafka did not take {what} in time{maybe}; retry shortly"
            raise Unavailable(detail, retry_after=1) from exc
        except KafkaError as exc:
            raise Unavailable(f"{what} could not be handed to Kafka: {exc}", retry_after=1) from exc
        self.kafka.saw_success()
        return written


GATEWAY = web.AppKey("gateway", Gateway)
EXCHANGE_ID = web.RequestKey("exchange_id", str)
"""Request key holding the exchange id (from X-Request-Id, or generated)."""
