"""Metric definitions. Each part builds its metrics on an injected registry.

Names and labels are part of what operators rely on; the README lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

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
        self.auth_failures = Counter(
            "ndxp_auth_failures_total",
            "Requests whose credential was missing, unknown or unreadable",
            registry=registry,
        )
        self.late_replies = Counter(
            "ndxp_late_replies_total",
            "Replies that arrived after their exchange timed out (dropped)",
            registry=registry,
        )
        self.forged_replies = Counter(
            "ndxp_forged_replies_total",
            "Replies dropped because they carry no valid signature of the exchange's provider (a member "
            "adapter's provider signs its replies)",
            ["provider"],
            registry=registry,
        )
        self.tx_pending = Gauge(
            "ndxp_tx_records_pending",
            "Transaction records sent, not yet acknowledged by Kafka",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.tx_sent = Counter(
            "ndxp_tx_records_sent_total", "Transaction records written to Kafka", registry=registry
        )
        self.tx_lost = Counter(
            "ndxp_tx_records_lost_total",
            "Transaction records Kafka did not acknowledge in time (logged; the exchange got 503)",
            registry=registry,
        )
        self.async_accepted = Counter(
            "ndxp_async_accepted_total",
            "Async exchanges accepted (202); their outcome is counted by the keeper",
            ["client", "provider", "service"],
            registry=registry,
        )
        self.events_published = Counter(
            "ndxp_events_published_total",
            "Events published through the gateway (acknowledged by Kafka)",
            ["publisher", "type"],
            registry=registry,
        )
        self.events_delivered = Counter(
            "ndxp_events_delivered_total",
            "Events streamed to subscribers (Server-Sent Events)",
            ["subscriber", "publisher", "type"],
            registry=registry,
        )
        self.event_lag = Gauge(
            "ndxp_event_subscriber_lag",
            "Events of a type not yet streamed to a connected subscriber",
            ["subscriber", "publisher", "type"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.view_bytes = Gauge(
            "ndxp_exchange_view_bytes",
            "Memory of a worker's stored-exchange view (index: every stored exchange in retention; "
            "bodies: final documents held; budget: NDXP_EXCHANGE_VIEW_MB)",
            ["part"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.idempotent_replays = Counter(
            "ndxp_idempotent_replays_total",
            "Requests answered from an earlier exchange with the same Idempotency-Key",
            ["client", "provider", "service"],
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
        self.consumer_lag = Gauge(
            "ndxp_adapter_consumer_lag",
            "Requests waiting in the provider's request topics (high watermark - position)",
            ["provider"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "ndxp_adapter_dead_letters_total",
            "Messages that could not be decoded, sent to ndxp.dlq.<provider>",
            ["provider"],
            registry=registry,
        )


class KeeperMetrics:
    """Metrics of the exchange keeper (async and idempotent exchanges, callbacks)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.forged_replies = Counter(
            "ndxp_keeper_forged_replies_total",
            "Replies to stored exchanges dropped for want of their provider's signature",
            ["provider"],
            registry=registry,
        )
        self.finished = Counter(
            "ndxp_stored_exchanges_total",
            "Stored (async or idempotent) exchanges finished by the keeper, by mode and status",
            ["provider", "service", "mode", "status"],
            registry=registry,
        )
        self.pending = Gauge(
            "ndxp_async_pending",
            "Stored exchanges accepted and not yet finished (waiting for their provider)",
            registry=registry,
        )
        self.callbacks = Counter(
            "ndxp_callbacks_total",
            "Callback delivery attempts, by result (delivered, retry, failed: dead-lettered)",
            ["result"],
            registry=registry,
        )
        self.callbacks_pending = Gauge(
            "ndxp_callbacks_pending",
            "Finished exchanges whose callback is not yet delivered (nor dead-lettered)",
            registry=registry,
        )


class CounterMetrics:
    """Metrics of the transaction counter."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.counted = Counter(
            "ndxp_counter_records_total",
            "Transaction records counted (exactly once)",
            ["outcome"],
            registry=registry,
        )
        self.duplicates = Counter(
            "ndxp_counter_duplicates_total",
            "Transaction records dropped because their exchange was already counted",
            registry=registry,
        )
        self.malformed = Counter(
            "ndxp_counter_malformed_total",
            "Messages on the transaction topic that are not transaction records (sent to <tx topic>.dlq)",
            registry=registry,
        )
        self.lag = Gauge(
            "ndxp_counter_lag",
            "Transaction records not yet counted (high watermark - position)",
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "ndxp_counter_commit_seconds",
            "Time to commit one batch of counts with its offsets (one Kafka transaction)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


class AuditMetrics:
    """Metrics of the exchange log (the audit part) and its data tracker."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.leaves = Counter(
            "ndxp_audit_leaves_total", "Leaves appended to the exchange log (exactly once)", registry=registry
        )
        self.duplicates = Counter(
            "ndxp_audit_duplicates_total",
            "Transaction records not appended because their exchange is already in the log",
            registry=registry,
        )
        self.malformed = Counter(
            "ndxp_audit_malformed_total",
            "Messages on the transaction topic that are not records (not in the log; the counter "
            "dead-letters them)",
            registry=registry,
        )
        self.tree_size = Gauge("ndxp_audit_tree_size", "Leaves in the exchange log", registry=registry)
        self.checkpoint_size = Gauge(
            "ndxp_audit_checkpoint_size", "Leaves the newest signed checkpoint covers", registry=registry
        )
        self.checkpoint_time = Gauge(
            "ndxp_audit_checkpoint_timestamp_seconds",
            "When the newest checkpoint was signed (its age: time() - this)",
            registry=registry,
        )
        self.lag = Gauge(
            "ndxp_audit_lag", "Transaction records not yet in the log (high watermark - position)",
            registry=registry,
        )  # fmt: skip
        self.tracker_behind = Gauge(
            "ndxp_audit_tracker_behind",
            "1 while the data tracker's PostgreSQL misses accesses the log holds (it catches up when back)",
            registry=registry,
        )
        self.requests = Counter(
            "ndxp_audit_requests_total", "Proof and tracker requests answered", ["kind", "status"],
            registry=registry,
        )  # fmt: skip
        self.coverage_seconds = Histogram(
            "ndxp_audit_coverage_seconds",
            "From an exchange's end to a signed checkpoint covering its leaf",
            buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "ndxp_audit_commit_seconds",
            "Time to commit one batch of leaves with its offsets (one Kafka transaction)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


class RegistryMetrics:
    """Metrics of one part's live registry follower (and, for the admin, its writes)."""

    def __init__(self, registry: CollectorRegistry, part: str) -> None:
        self.part = part
        self.version = Gauge(
            "ndxp_registry_version",
            "The registry topic's offset this part has applied up to (the registry version it runs)",
            ["part"],
            registry=registry,
            multiprocess_mode="livemin",
        ).labels(part)
        self.apply_lag = Histogram(
            "ndxp_registry_apply_lag_seconds",
            "From a registry change written to this part applying it",
            ["part"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(part)
        self.skipped = Counter(
            "ndxp_registry_records_skipped_total",
            "Registry records this part could not decode (skipped, never half-applied)",
            ["part"],
            registry=registry,
        ).labels(part)
        self.changes = Counter(
            "ndxp_registry_changes_total",
            "Registry changes written by the management API, by action and outcome (applied, refused)",
            ["action", "outcome"],
            registry=registry,
        )


def exposition(registry: CollectorRegistry, multiprocess_dir: Path | None = None) -> web.Response:
    """A /metrics response: this registry, or every worker's metrics in multiprocess mode."""
    if multiprocess_dir is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    resp = web.Response(body=generate_latest(registry))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, ready: Callable[[], bool] = lambda: True
) -> web.AppRunner:
    """Serve ``/metrics`` and ``/readyz`` of a process with no HTTP server of its own."""

    async def metrics(_: web.Request) -> web.Response:
        return exposition(registry)

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"ready": ready()}, status=200 if ready() else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
