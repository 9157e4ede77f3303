"""What one gateway worker holds, and the typed keys to reach it from handlers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from broker.catalog import Catalog
from broker.counter.recorder import TxRecorder
from broker.counter.stats import StatsView
from broker.exchanges.view import ExchangeView
from broker.gateway.limits import Limits
from broker.gateway.replies import ReplyRouter
from broker.kafka import Producer, Reachability
from broker.metrics import GatewayMetrics
from broker.registry import Registry
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
    producer: Producer = field(init=False)
    """Set when the app starts (it needs the running loop)."""
    kafka: Reachability = field(init=False)
    """Whether Kafka answers; set with the producer."""


GATEWAY = web.AppKey("gateway", Gateway)
EXCHANGE_ID = web.RequestKey("exchange_id", str)
"""Request key holding the exchange id (from X-Request-Id, or generated)."""
