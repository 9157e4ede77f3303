"""Metric definitions. Each part builds its metrics on an injected registry.

Names and labels are part of what operators rely on; the README lists them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class GatewayMetrics:
    """Metrics of one gateway worker."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.exchanges = Counter(
            "ndxp_exchanges_total",
            "Exchanges answered by the gateway, by outcome code",
            ["client", "provider", "service", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "ndxp_exchange_duration_seconds",
            "Gateway end-to-end latency of exchanges (request in to response out)",
            ["provider", "service"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.kafka_roundtrip = Histogram(
            "ndxp_kafka_roundtrip_seconds",
            "Request produced to Kafka until the reply arrived",
            ["provider", "service"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "ndxp_gateway_in_flight",
            "Exchanges awaiting a reply",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.late_replies = Counter(
            "ndxp_late_replies_total",
            "Replies that arrived after their exchange timed out (dropped)",
            registry=registry,
        )


class AdapterMetrics:
    """Metrics of the adapter runtime."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "ndxp_adapter_requests_total",
            "Requests handled by adapters, by outcome",
            ["provider", "service", "outcome"],
            registry=registry,
        )
        self.handler = Histogram(
            "ndxp_adapter_handler_seconds",
            "Time spent in the service handler",
            ["provider", "service"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.expired = Counter(
            "ndxp_adapter_expired_total",
            "Requests skipped because their deadline had passed",
            ["provider", "service"],
            registry=registry,
        )
        self.redelivered = Counter(
            "ndxp_adapter_redelivered_total",
            "Redelivered requests answered from the memory of recent replies",
            ["provider"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "ndxp_adapter_dead_letters_total",
            "Messages that could not be decoded, sent to ndxp.dlq.<provider>",
            ["provider"],
            registry=registry,
        )
