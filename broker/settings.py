"""Settings: the one reader of ``NDXP_*`` environment variables.

Every part of the platform takes a :class:`Settings`; nothing else reads
``os.environ``. Values are cast explicitly and checked, and secrets
hide themselves in ``repr``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from broker.errors import SettingsError
from broker.model.envelope import Names

PREFIX = "NDXP_"
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _int(name: str, raw: str, *, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r}: expected an integer") from exc
    if value < minimum:
        raise SettingsError(f"{name}={raw!r}: must be >= {minimum}")
    return value


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r}: expected a number") from exc


_SECRETS = frozenset({"kafka_sasl_password"})
_SECURITY_PROTOCOLS = frozenset({"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Platform configuration, read once from the environment."""

    # Kafka
    kafka_bootstrap: str | None = None
    """``NDXP_KAFKA_BOOTSTRAP``: use this cluster instead of a local one."""
    kafka_home: Path | None = None
    """``NDXP_KAFKA_HOME`` (or ``KAFKA_HOME``): an unpacked Apache Kafka to run."""
    kafka_heap_mb: int = 512
    kafka_linger_ms: int = 2
    kafka_replication_factor: int | None = None
    """``NDXP_KAFKA_REPLICATION_FACTOR``; unset: 3, or fewer on a smaller cluster."""
    kafka_start_timeout_s: float = 120.0
    kafka_security_protocol: str = "PLAINTEXT"
    """``NDXP_KAFKA_SECURITY_PROTOCOL``: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (every client)."""
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)
    """``NDXP_KAFKA_SASL_PASSWORD``: never shown in ``repr`` or logs."""
    kafka_ssl_cafile: Path | None = None
    """``NDXP_KAFKA_SSL_CAFILE``: CA bundle (PEM) that signed the brokers' certificates."""
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "ndxp")
    """``NDXP_CACHE_DIR``: resolved Kafka jars and local state files."""

    # Gateway
    host: str = "127.0.0.1"
    internal_host: str = "127.0.0.1"
    """``NDXP_INTERNAL_HOST``: where internal servers listen (adapter and counter metrics, the
    land backend); loopback unless the operator chooses, whatever ``NDXP_HOST`` exposes."""
    expose: frozenset[str] = frozenset({"stats", "metrics"})
    """``NDXP_EXPOSE``: which of ``stats`` (/v1/stats) and ``metrics`` (/metrics) the gateway
    port serves (comma-separated; empty: neither, scrape the parts' internal ports instead)."""
    port: int = 8080
    workers: int = 1
    instance_id: str = field(default_factory=socket.gethostname)
    registry_path: Path = field(default_factory=lambda: _project_root() / "deploy" / "registry.yaml")
    schemas_dir: Path = field(default_factory=lambda: _project_root() / "schemas")
    max_body_bytes: int = 1024 * 1024
    max_in_flight: int = 10_000
    default_rate_limit: float = 1000.0
    """Requests per second per client when the registry gives none."""
    auth_failure_rate: float = 5.0
    """``NDXP_AUTH_FAILURE_RATE``: failed authentications per second allowed per source address
    (burst 4x); beyond it, that address gets 429 without its key being checked."""
    shutdown_grace_s: float = 10.0
    tls_cert: Path | None = None
    """``NDXP_TLS_CERT``: the gateway's certificate chain (PEM); with ``NDXP_TLS_KEY``, it serves HTTPS."""
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    """``NDXP_TLS_CLIENT_CA``: CA bundle for client certificates (mutual TLS, as X-Road's
    security servers); a certificate is then asked for, verified, and maps to an agency
    by the registry's ``certs_sha256``. Callers without one still use their API key."""
    body_timeout_s: float = 10.0
    """``NDXP_BODY_TIMEOUT_S``: a request body not received within this answers 408."""
    keepalive_timeout_s: float = 15.0
    """``NDXP_KEEPALIVE_TIMEOUT_S``: idle keep-alive connections are closed after this."""
    log_level: str = "INFO"

    # Kafka names
    topic_prefix: str = "ndxp"
    """``NDXP_TOPIC_PREFIX``: the first part of every topic and consumer group name (and of the
    three topics below when they are not set): platforms with different prefixes share nothing."""
    names: Names = field(init=False, repr=False, compare=False)
    """Every topic and consumer group name, under ``topic_prefix`` (made once, used per exchange)."""

    # Transaction records and counting
    tx_topic: str = ""
    """``NDXP_TX_TOPIC``: where the gateway writes a record of every exchange (``<prefix>.tx``)."""
    stats_topic: str = ""
    """``NDXP_STATS_TOPIC``: the counter's compacted counts, also naming its group (``<prefix>.stats``)."""
    stats_utc_offset_hours: int = 7
    """Days are counted in this UTC offset (Vietnam: +7, no daylight saving)."""
    dedupe_retention_hours: int = 48
    """How long the counter remembers exchange ids to drop duplicate records."""
    counter_batch: int = 5000
    """Most transaction records the counter commits in one Kafka transaction (<= 20000,
    so that one batch's exchange ids fit in one Kafka message)."""
    exchanges_topic: str = ""
    """``NDXP_EXCHANGES_TOPIC``: stored exchanges (async and idempotent): their documents, by id
    (``<prefix>.exchanges``)."""
    exchanges_retention_hours: int = 96
    """``NDXP_EXCHANGES_RETENTION_HOURS``: how long stored exchanges stay readable (>= 50: the
    longest async wait, 48 h, plus a margin); also bounds what each gateway holds in memory."""
    reply_topic_idle_hours: int = 24
    """``NDXP_REPLY_TOPIC_IDLE_HOURS``: the keeper deletes reply topics with no message for this long
    (a live gateway worker writes a heartbeat every 10 minutes; a killed one's topic goes)."""
    max_streams: int = 10
    """``NDXP_MAX_STREAMS``: event streams (SSE) one client may hold open per gateway worker."""
    events_retention_hours: int = 168
    """``NDXP_EVENTS_RETENTION_HOURS``: how far back subscribers can replay events (``?from=``)."""
    exchange_view_mb: int = 256
    """``NDXP_EXCHANGE_VIEW_MB``: finished stored exchanges each gateway worker holds in memory
    (the oldest beyond it are read back from Kafka when asked for)."""
    callback_attempts: int = 8
    """``NDXP_CALLBACK_ATTEMPTS``: deliveries tried before a callback is dead-lettered."""
    callback_backoff_s: float = 2.0
    """``NDXP_CALLBACK_BACKOFF_S``: first retry delay; doubles each time (capped at 10 min), with jitter."""
    callback_timeout_s: float = 10.0
    """``NDXP_CALLBACK_TIMEOUT_S``: how long one callback delivery may take."""
    metrics_port: int = 0
    """``NDXP_METRICS_PORT``: /metrics of an adapter or counter process (0: none)."""
    metrics_dir: Path | None = None
    """``NDXP_METRICS_DIR``: prometheus-client multiprocess directory for gateway workers."""

    # Adapters
    adapter_concurrency: int = 256
    adapter_dedupe_size: int = 100_000
    sim_latency_ms: int = 0
    land_backend_url: str = "http://127.0.0.1:8091"
    """``NDXP_LAND_BACKEND_URL``: the land registry's own REST backend."""
    backend_timeout_ms: int = 2000

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={'***' if f.name in _SECRETS and getattr(self, f.name) else getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
        )
        return f"Settings({shown})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        kw: dict[str, object] = {}

        def get(name: str) -> str | None:
            raw = env.get(PREFIX + name)
            return raw if raw not in (None, "") else None

        if (v := get("KAFKA_BOOTSTRAP")) is not None:
            kw["kafka_bootstrap"] = v
        home = get("KAFKA_HOME") or (env.get("KAFKA_HOME") or None)
        if home is not None:
            kw["kafka_home"] = Path(home)
        for name, attr, minimum in (
            ("KAFKA_HEAP_MB", "kafka_heap_mb", 128),
            ("KAFKA_LINGER_MS", "kafka_linger_ms", 0),
            ("KAFKA_REPLICATION_FACTOR", "kafka_replication_factor", 1),
            ("PORT", "port", 0),
            ("WORKERS", "workers", 1),
            ("MAX_BODY_BYTES", "max_body_bytes", 1),
            ("MAX_IN_FLIGHT", "max_in_flight", 1),
            ("ADAPTER_CONCURRENCY", "adapter_concurrency", 1),
            ("ADAPTER_DEDUPE_SIZE", "adapter_dedupe_size", 1),
            ("SIM_LATENCY_MS", "sim_latency_ms", 0),
            ("BACKEND_TIMEOUT_MS", "backend_timeout_ms", 1),
            ("METRICS_PORT", "metrics_port", 0),
            ("COUNTER_BATCH", "counter_batch", 1),  # at most 20000: see counter_batch
            ("DEDUPE_RETENTION_HOURS", "dedupe_retention_hours", 1),
            ("EXCHANGES_RETENTION_HOURS", "exchanges_retention_hours", 50),
            ("CALLBACK_ATTEMPTS", "callback_attempts", 1),
            ("EVENTS_RETENTION_HOURS", "events_retention_hours", 1),
            ("MAX_STREAMS", "max_streams", 1),
            ("REPLY_TOPIC_IDLE_HOURS", "reply_topic_idle_hours", 1),
            ("EXCHANGE_VIEW_MB", "exchange_view_mb", 1),
        ):
            if (v := get(name)) is not None:
                kw[attr] = _int(PREFIX + name, v, minimum=minimum)
        if (v := get("STATS_UTC_OFFSET_HOURS")) is not None:
            kw["stats_utc_offset_hours"] = _int(PREFIX + "STATS_UTC_OFFSET_HOURS", v, minimum=-12)
        for name, attr in (
            ("KAFKA_START_TIMEOUT_S", "kafka_start_timeout_s"),
            ("DEFAULT_RATE_LIMIT", "default_rate_limit"),
            ("AUTH_FAILURE_RATE", "auth_failure_rate"),
            ("SHUTDOWN_GRACE_S", "shutdown_grace_s"),
            ("BODY_TIMEOUT_S", "body_timeout_s"),
            ("KEEPALIVE_TIMEOUT_S", "keepalive_timeout_s"),
            ("CALLBACK_BACKOFF_S", "callback_backoff_s"),
            ("CALLBACK_TIMEOUT_S", "callback_timeout_s"),
        ):
            if (v := get(name)) is not None:
                kw[attr] = _float(PREFIX + name, v)
        for name, attr in (
            ("CACHE_DIR", "cache_dir"),
            ("REGISTRY", "registry_path"),
            ("SCHEMAS_DIR", "schemas_dir"),
            ("METRICS_DIR", "metrics_dir"),
            ("TLS_CERT", "tls_cert"),
            ("TLS_KEY", "tls_key"),
            ("TLS_CLIENT_CA", "tls_client_ca"),
            ("KAFKA_SSL_CAFILE", "kafka_ssl_cafile"),
        ):
            if (v := get(name)) is not None:
                kw[attr] = Path(v)
        for name, attr in (
            ("HOST", "host"),
            ("KAFKA_SECURITY_PROTOCOL", "kafka_security_protocol"),
            ("KAFKA_SASL_MECHANISM", "kafka_sasl_mechanism"),
            ("KAFKA_SASL_USERNAME", "kafka_sasl_username"),
            ("KAFKA_SASL_PASSWORD", "kafka_sasl_password"),
            ("INTERNAL_HOST", "internal_host"),
            ("INSTANCE_ID", "instance_id"),
            ("LOG_LEVEL", "log_level"),
            ("LAND_BACKEND_URL", "land_backend_url"),
            ("TOPIC_PREFIX", "topic_prefix"),
            ("TX_TOPIC", "tx_topic"),
            ("STATS_TOPIC", "stats_topic"),
            ("EXCHANGES_TOPIC", "exchanges_topic"),
        ):
            if (v := get(name)) is not None:
                kw[attr] = v
        topic_prefix = str(kw.get("topic_prefix", "ndxp"))
        if _TOPIC_PREFIX.match(topic_prefix) is None:
            raise SettingsError(
                f"{PREFIX}TOPIC_PREFIX={topic_prefix!r}: 1-100 characters of A-Z a-z 0-9 . _ -"
            )
        raw_expose = env.get(PREFIX + "EXPOSE")
        if raw_expose is not None:
            chosen = frozenset(p.strip() for p in raw_expose.split(",") if p.strip())
            if not chosen <= {"stats", "metrics"}:
                raise SettingsError(f"{PREFIX}EXPOSE={raw_expose!r}: expected stats and/or metrics")
            kw["expose"] = chosen
        protocol = str(kw.get("kafka_security_protocol", "PLAINTEXT")).upper()
        if protocol not in _SECURITY_PROTOCOLS:
            raise SettingsError(
                f"{PREFIX}KAFKA_SECURITY_PROTOCOL={protocol!r}: one of {sorted(_SECURITY_PROTOCOLS)}"
            )
        kw["kafka_security_protocol"] = protocol
        if protocol.startswith("SASL") and not (
            kw.get("kafka_sasl_username") and kw.get("kafka_sasl_password")
        ):
            raise SettingsError(
                f"{protocol} needs {PREFIX}KAFKA_SASL_USERNAME and {PREFIX}KAFKA_SASL_PASSWORD"
            )
        if ("tls_cert" in kw) != ("tls_key" in kw):
            raise SettingsError(f"{PREFIX}TLS_CERT and {PREFIX}TLS_KEY go together")
        if "tls_client_ca" in kw and "tls_cert" not in kw:
            raise SettingsError(f"{PREFIX}TLS_CLIENT_CA needs {PREFIX}TLS_CERT and {PREFIX}TLS_KEY")
        if int(kw.get("counter_batch", 0)) > 20_000:  # type: ignore[call-overload]
            raise SettingsError(f"{PREFIX}COUNTER_BATCH must be at most 20000")
        return cls(**kw)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", Names(self.topic_prefix))
        for attr in ("tx_topic", "stats_topic", "exchanges_topic"):  # unset: under the prefix
            if not getattr(self, attr):
                object.__setattr__(self, attr, f"{self.topic_prefix}.{attr.removesuffix('_topic')}")

    @classmethod
    def env_names(cls) -> frozenset[str]:
        """Every environment variable ``from_env`` reads (it asks for each one, set or not)."""
        asked: set[str] = set()

        class Recorder(dict[str, str]):
            def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
                asked.add(key)
                return super().get(key, default)

        cls.from_env(Recorder())
        return frozenset(asked)

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes`` applied (settings are frozen)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def child_environment(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment for a child process of the platform: ours, plus ``NDXP_*`` overrides."""
    env = dict(os.environ)
    if settings.kafka_bootstrap:
        env[PREFIX + "KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    env.update({PREFIX + k: v for k, v in overrides.items()})
    return env
