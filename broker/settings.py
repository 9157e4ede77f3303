"""Settings: the one reader of ``NDXP_*`` environment variables.

Every part of the platform takes a :class:`Settings`; nothing else reads
``os.environ``. Each setting is declared once, as a field with its
:func:`setting` metadata (environment variable, bounds, help): ``from_env``
reads, casts and checks every one from that table, and the documentation's
configuration page is generated from it (``python -m broker.settings``).
Secrets hide themselves in ``repr``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.errors import SettingsError
from broker.model.envelope import Names

PREFIX = "NDXP_"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_EXPOSABLE = frozenset({"stats", "metrics"})
_DERIVED_TOPICS = ("tx_topic", "stats_topic", "exchanges_topic", "registry_topic")
"""Unset, these are ``<topic_prefix>.tx`` and so on (and follow the prefix in ``replace``)."""


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """How one field is configured: its variable, its bounds, what it is for."""

    help: str
    env: str = ""
    """The variable without ``NDXP_`` (default: the field's name in capitals)."""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    secret: bool = False
    shown: str = ""
    """The default as the documentation shows it, when it is computed (a host name, a path)."""
    also: str = ""
    """A second variable read when the first is unset (``KAFKA_HOME``)."""
    parse: Callable[[str, str], Any] | None = None
    """How to read the variable's text (name, raw) when its type alone does not say."""
    empty_is_a_value: bool = False
    """Set but empty means something (``NDXP_EXPOSE=``: neither), not "unset"."""


def setting(
    default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None, **meta: Any
) -> Any:
    """A settings field: its default (or ``factory``) and its :class:`Setting` metadata."""
    info = Setting(**meta)
    kw: dict[str, Any] = {"metadata": {"setting": info}}
    if info.secret:
        kw["repr"] = False
    if factory is not None:
        return field(default_factory=factory, **kw)
    return field(default=default, **kw)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Platform configuration, read once from the environment."""

    # -- Kafka --
    kafka_bootstrap: str | None = setting(
        None, help="Use this Kafka cluster (host:port,…) instead of a local one."
    )
    kafka_home: Path | None = setting(
        None, also="KAFKA_HOME", help="An unpacked Apache Kafka to run locally instead of jars from Maven."
    )
    kafka_heap_mb: int = setting(512, minimum=128, help="Heap of each local Kafka node (MB).")
    kafka_linger_ms: int = setting(2, minimum=0, help="How long producers wait to fill a batch.")
    kafka_replication_factor: int | None = setting(
        None,
        minimum=1,
        shown="3, fewer on a smaller cluster",
        help="Replication factor of the topics the platform creates.",
    )
    kafka_send_within_s: float = setting(
        6.0, minimum=0.1,
        help="Longest the gateway waits for Kafka to acknowledge a request or event before answering 503 "
        "(never past the service's deadline), and at least how long it waits for an exchange's "
        "transaction record (up to the deadline). Above the time Kafka takes to fence a lost broker "
        "(broker.session.timeout.ms: 3 s on the local 3-node cluster, 9 s by default), so that a "
        "broker's loss delays calls instead of failing them.",
    )  # fmt: skip
    kafka_start_timeout_s: float = setting(120.0, minimum=1, help="How long a local Kafka may take to start.")
    kafka_security_protocol: str = setting(
        "PLAINTEXT",
        choices=_SECURITY_PROTOCOLS,
        help="Security protocol of every Kafka client of every part.",
    )
    kafka_sasl_mechanism: str = setting("SCRAM-SHA-512", help="SASL mechanism (with a SASL protocol).")
    kafka_sasl_username: str | None = setting(None, help="SASL user name.")
    kafka_sasl_password: str | None = setting(
        None, secret=True, help="SASL password: never shown in repr or logs."
    )
    kafka_ssl_cafile: Path | None = setting(
        None, help="CA bundle (PEM) that signed the brokers' certificates."
    )
    kafka_users: str = setting(
        "kafka",
        choices=("kafka", "strimzi"),
        help="Who makes members' Kafka users and ACLs: the platform, through Kafka's Admin API, or "
        "Strimzi's User Operator from KafkaUser resources (deploy/k8s/base/users.yaml).",
    )
    kafka_member_bootstrap: str | None = setting(
        None,
        shown="NDXP_KAFKA_BOOTSTRAP",
        help="The Kafka address members' own adapters connect to, from their premises.",
    )
    cache_dir: Path = setting(
        factory=lambda: Path.home() / ".cache" / "ndxp", shown="~/.cache/ndxp",
        help="Resolved Kafka jars and local state files.",
    )  # fmt: skip

    # -- Gateway --
    host: str = setting("127.0.0.1", help="Where the gateway listens.")
    internal_host: str = setting(
        "127.0.0.1",
        help="Where internal servers listen (adapter and counter metrics, the land backend), whatever "
        "HOST exposes.",
    )
    expose: frozenset[str] = setting(
        frozenset(), parse=lambda name, raw: _expose(name, raw), empty_is_a_value=True,
        choices=tuple(sorted(_EXPOSABLE)), shown="(empty)",
        help="Which of stats (/v1/stats) and metrics (/metrics) the gateway port serves to anyone "
        "(comma-separated). Otherwise /metrics takes an operator's credential and /v1/stats shows an "
        "agency its own rows (an operator all).",
    )  # fmt: skip
    port: int = setting(8080, minimum=0, maximum=65535, help="The gateway's port.")
    workers: int = setting(1, minimum=1, help="Gateway worker processes (SO_REUSEPORT).")
    instance_id: str = setting(
        factory=socket.gethostname,
        shown="the host name",
        help="Names this instance's reply topics and transactional ids.",
    )
    static_membership: bool = setting(
        True,
        help="Adapters, keepers and the counter join their consumer groups as static members "
        "(group.instance.id = the instance id): one restarted within the session timeout takes "
        "its partitions back with no rebalance; one stopped for good holds them until then.",
    )
    registry_path: Path = setting(
        factory=lambda: _project_root() / "deploy" / "registry.yaml", env="REGISTRY",
        shown="deploy/registry.yaml",
        help="The registry file `ndxp registry import` (and REGISTRY_SEED) loads into the live registry.",
    )  # fmt: skip
    schemas_dir: Path = setting(
        factory=lambda: _project_root() / "schemas", shown="schemas/", help="The service contracts."
    )
    registry_seed: bool = setting(
        False,
        help="A part that finds the live registry empty imports REGISTRY and SCHEMAS_DIR into it first "
        "(the demo's start; `ndxp up` imports them itself).",
    )
    admin_host: str = setting("127.0.0.1", help="Where the management API (/admin/v1) listens.")
    admin_port: int = setting(
        8081, minimum=0, maximum=65535, help="The management API's port (never the exchange port)."
    )
    admin_key: str | None = setting(None, secret=True, help="`ndxp admin`'s API key (your agency's).")
    max_body_bytes: int = setting(1024 * 1024, minimum=1, help="Largest request body accepted (bytes).")
    max_in_flight: int = setting(
        10_000, minimum=1, help="Exchanges in flight per gateway worker; beyond: 503."
    )
    default_rate_limit: float = setting(
        1000.0, minimum=0, help="Requests per second per client when the registry gives none."
    )
    auth_failure_rate: float = setting(
        5.0, minimum=0,
        help="Failed authentications per second allowed per source address (burst 4x), split across workers.",
    )  # fmt: skip
    trusted_proxies: tuple[IPNetwork, ...] = setting(
        (), parse=lambda name, raw: _networks(name, raw), shown="none",
        help="Addresses or networks (comma-separated, CIDR) of the proxies in front of the gateway: from "
        "them, the client's address is taken from X-Forwarded-For (for the failed-login allowance).",
    )  # fmt: skip
    shutdown_grace_s: float = setting(
        10.0, minimum=0, help="How long a stopping part finishes what it holds."
    )
    tls_cert: Path | None = setting(
        None, help="The gateway's certificate chain (PEM); with TLS_KEY it serves HTTPS."
    )
    tls_key: Path | None = setting(None, help="The gateway's private key (PEM).")
    tls_client_ca: Path | None = setting(
        None,
        help="CA bundle for client certificates (mutual TLS): a certificate maps to an agency by the "
        "registry's certs_sha256. Callers without one still use their API key.",
    )
    body_timeout_s: float = setting(
        10.0, minimum=0, help="A request body not received within this answers 408."
    )
    keepalive_timeout_s: float = setting(
        15.0, minimum=0, help="Idle keep-alive connections are closed after this."
    )
    log_level: str = setting("INFO", help="Python log level of every part.")

    # -- Kafka names --
    topic_prefix: str = setting(
        "ndxp",
        parse=lambda name, raw: _topic_prefix(name, raw),
        help="The first part of every topic and consumer group name (and of TX_TOPIC, STATS_TOPIC and "
        "EXCHANGES_TOPIC when unset): platforms with different prefixes share nothing.",
    )
    names: Names = field(init=False, repr=False, compare=False)
    """Every topic and consumer group name, under ``topic_prefix`` (made once, used per exchange)."""

    # -- Transaction records and counting --
    tx_topic: str = setting(
        "", shown="<prefix>.tx", help="Where the gateway writes a record of every exchange."
    )
    stats_topic: str = setting(
        "", shown="<prefix>.stats", help="The counter's compacted counts; also names its group."
    )
    stats_utc_offset_hours: int = setting(
        7,
        minimum=-12,
        maximum=14,
        help="Days are counted in this UTC offset (Vietnam: +7, no daylight saving).",
    )
    dedupe_retention_hours: int = setting(
        48, minimum=1, help="How long the counter remembers exchange ids to drop duplicate records."
    )
    counter_batch: int = setting(
        5000, minimum=1, maximum=20_000,
        help="Most transaction records the counter commits in one Kafka transaction (one batch's ids fit "
        "in one Kafka message).",
    )  # fmt: skip
    # -- Exchange log and data tracker --
    audit_origin: str = setting(
        "ndxp.local/log",
        help="The exchange log's name in its signed checkpoints (C2SP origin): the platform's domain + /log.",
    )
    audit_key: str | None = setting(
        None, secret=True,
        help="The log's Ed25519 signer key (PRIVATE+KEY+…, `ndxp audit keygen`); unset, the audit part "
        "makes one in CACHE_DIR/audit.key. A new key is recorded in the log, endorsed by the old one.",
    )  # fmt: skip
    audit_db: Path | None = setting(
        None, shown="CACHE_DIR/audit.sqlite",
        help="The audit part's SQLite index of the log (tree nodes, leaves by exchange, accesses by "
        "subject): a cache, rebuilt from Kafka when missing.",
    )  # fmt: skip
    audit_checkpoint_s: float = setting(
        1.0, minimum=0.05, help="The log signs a new checkpoint at most this often (when it grew)."
    )
    audit_host: str = setting("127.0.0.1", help="Where the audit part's internal API listens.")
    audit_port: int = setting(
        8082, minimum=0, maximum=65535, help="The audit part's internal API port (the gateway proxies it)."
    )
    audit_url: str | None = setting(
        None, shown="http://AUDIT_HOST:AUDIT_PORT",
        help="Where gateways reach the audit part (/v1/audit, /v1/subjects).",
    )  # fmt: skip
    tracker_dsn: str | None = setting(
        None, secret=True,
        help="The data tracker's PostgreSQL (postgresql://…): accesses by subject are kept there, for "
        "several audit instances to answer from; unset, in the audit part's SQLite index.",
    )  # fmt: skip
    subject_secret: str | None = setting(
        None, secret=True,
        help="The platform secret the data tracker keys subjects with (HMAC-SHA-256 of a request's "
        "x-ndxp-subject field); unset, no subject is recorded.",
    )  # fmt: skip
    registry_topic: str = setting(
        "", shown="<prefix>.registry",
        help="The live registry (compacted); its change log is <registry topic>.changes.",
    )  # fmt: skip
    exchanges_topic: str = setting(
        "",
        shown="<prefix>.exchanges",
        help="Stored exchanges (async and idempotent): their documents, by id.",
    )
    exchanges_retention_hours: int = setting(
        96, minimum=50,
        help="How long stored exchanges stay readable (>= 50: the longest async wait, 48 h, plus a margin).",
    )  # fmt: skip
    reply_topic_idle_hours: int = setting(
        24, minimum=1, help="The keeper deletes reply topics with no message for this long."
    )
    max_streams: int = setting(
        10, minimum=1, help="Event streams (SSE) one client may hold per gateway worker."
    )
    max_open_stored: int = setting(
        10_000, minimum=1,
        help="Async and idempotent exchanges one client may have open at once when the registry gives "
        "none (beyond: 429).",
    )  # fmt: skip
    max_long_polls: int = setting(
        50, minimum=1, help="GET /v1/exchanges/{id} with Prefer: wait one client may hold per gateway worker."
    )
    max_stream_s: float = setting(
        3600.0, minimum=1,
        help="An event stream ends after this long (event: reauthenticate); the client reconnects and "
        "authenticates again.",
    )  # fmt: skip
    events_retention_hours: int = setting(168, minimum=1, help="How far back subscribers can replay events.")
    exchange_view_mb: int = setting(
        256,
        minimum=1,
        help="Memory of each gateway worker's stored-exchange view: the index of every stored exchange "
        "in retention and the final documents held (older ones: read back from Kafka).",
    )
    callback_attempts: int = setting(
        8, minimum=1, help="Callback deliveries tried before one is dead-lettered."
    )
    callback_backoff_s: float = setting(
        2.0, minimum=0, help="First callback retry delay; doubles each time (capped at 10 min), with jitter."
    )
    callback_timeout_s: float = setting(
        10.0, minimum=0,
        help="How long one callback delivery may take to connect, and then to answer (waiting for a "
        "free connection is not charged to the receiver).",
    )  # fmt: skip
    callback_allow_private: bool = setting(
        False,
        help="For local development and tests only: callbacks over http and to loopback or private "
        "addresses (otherwise https to public addresses only).",
    )
    callback_concurrency: int = setting(
        8, minimum=1, help="Callback deliveries in flight per agency (a slow receiver slows only its own)."
    )
    metrics_port: int = setting(
        0, minimum=0, maximum=65535, help="/metrics of an adapter, counter or keeper process (0: none)."
    )
    metrics_dir: Path | None = setting(
        None, help="prometheus-client multiprocess directory for gateway workers."
    )
    shared_limits: Path | None = setting(
        None,
        help="The file the workers of one gateway instance share clients' limits in (the "
        "supervisor makes one; unset, each worker keeps 1/workers of every limit).",
    )

    # -- Adapters --
    adapter_concurrency: int = setting(256, minimum=1, help="Requests one adapter handles at once.")
    adapter_service_concurrency: int = setting(
        128, minimum=1,
        help="Of them, most of one service at once: more of it wait their turn while other services' "
        "go on (a slow service does not hold up the rest).",
    )  # fmt: skip
    adapter_backlog: int = setting(
        4096, minimum=1,
        help="Requests one adapter holds (running, or waiting their service's turn) before it stops "
        "fetching: past it, a backlogged service delays its provider's others.",
    )  # fmt: skip
    adapter_dedupe_size: int = setting(
        100_000,
        minimum=1,
        help="Most replies an adapter remembers to answer a redelivered exchange (each is kept until "
        "30 s past its request's deadline, then forgotten).",
    )
    adapter_dedupe_mb: float = setting(
        32.0, minimum=0.001,
        help="Memory each provider's adapter may give the replies it remembers (the oldest are "
        "forgotten first): redeliveries come after a restart or a rebalance, seconds of replies.",
    )  # fmt: skip
    sim_latency_ms: int = setting(0, minimum=0, help="Simulated agencies' extra latency.")
    backend_timeout_ms: int = setting(2000, minimum=1, help="Timeout of a call to an agency's own backend.")
    reply_secret: str | None = setting(
        None, secret=True,
        help="A member's own adapter: the reply secret its Kafka credentials came with (it signs every "
        "reply, which the platform checks).",
    )  # fmt: skip
    backend_secrets_dir: Path | None = setting(
        None, help="Where bound services' ${secret:NAME} and ${env:NAME} are files "
        "(<dir>/<provider>/<NAME>), besides the provider's variables (see the agency guide).",
    )  # fmt: skip
    backend_allow_private: bool = setting(
        False,
        help="For local development and tests only: backend URLs written in the registry may be http and "
        "private addresses (a URL from a reference always may).",
    )

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={'***' if _info(f).secret and getattr(self, f.name) else getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name != "names"
        )
        return f"Settings({shown})"

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", Names(self.topic_prefix))
        for attr in _DERIVED_TOPICS:  # unset: under the prefix
            if not getattr(self, attr):
                object.__setattr__(self, attr, f"{self.topic_prefix}.{attr.removesuffix('_topic')}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        kw: dict[str, Any] = {}
        for f in configurable():
            info = _info(f)
            name = PREFIX + (info.env or f.name.upper())
            raw = env.get(name)
            if raw in (None, "") and info.also:
                raw, name = env.get(info.also), info.also
            if raw is None or (raw == "" and not info.empty_is_a_value):
                continue
            assert raw is not None
            kw[f.name] = info.parse(name, raw) if info.parse else _cast(name, raw, hints[f.name], info)
        _check_together(kw)
        return cls(**kw)

    @classmethod
    def env_names(cls) -> frozenset[str]:
        """Every environment variable ``from_env`` reads."""
        out = set()
        for f in configurable():
            info = _info(f)
            out.add(PREFIX + (info.env or f.name.upper()))
            if info.also:
                out.add(info.also)
        return frozenset(out)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (settings are frozen); a topic named after the prefix follows
        a new prefix, one set explicitly keeps its name."""
        if "topic_prefix" in changes:
            for attr in _DERIVED_TOPICS:
                if (
                    attr not in changes
                    and getattr(self, attr) == f"{self.topic_prefix}.{attr.removesuffix('_topic')}"
                ):
                    changes[attr] = ""
        return dataclasses.replace(self, **changes)


def _info(f: dataclasses.Field[Any]) -> Setting:
    info: Setting = f.metadata["setting"]
    return info


def configurable() -> list[dataclasses.Field[Any]]:
    """The fields read from the environment, in declaration order."""
    return [f for f in dataclasses.fields(Settings) if "setting" in f.metadata]


def _cast(name: str, raw: str, hint: Any, info: Setting) -> Any:
    kinds = set(typing.get_args(hint)) - {type(None)} or {hint}
    kind = next(iter(kinds))
    value: Any
    if kind is int:
        try:
            value = int(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}={raw!r}: expected an integer") from exc
    elif kind is float:
        try:
            value = float(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}={raw!r}: expected a number") from exc
    elif kind is Path:
        return Path(raw)
    else:
        value = raw
    if info.minimum is not None and value < info.minimum:
        raise SettingsError(f"{name}={raw!r}: must be >= {info.minimum:g}")
    if info.maximum is not None and value > info.maximum:
        raise SettingsError(f"{name} must be at most {info.maximum:g}")
    if info.choices:  # in any case, taken as the choice is spelled
        spelled = {c.upper(): c for c in info.choices}
        if str(value).upper() not in spelled:
            raise SettingsError(f"{name}={value!r}: one of {sorted(info.choices)}")
        value = spelled[str(value).upper()]
    return value


def _topic_prefix(name: str, raw: str) -> str:
    if _TOPIC_PREFIX.match(raw) is None:
        raise SettingsError(f"{name}={raw!r}: 1-100 characters of A-Z a-z 0-9 . _ -")
    return raw


def _networks(name: str, raw: str) -> tuple[IPNetwork, ...]:
    try:
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip()
        )
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r}: expected addresses or CIDR networks, comma-separated") from exc


def _expose(name: str, raw: str) -> frozenset[str]:
    chosen = frozenset(p.strip() for p in raw.split(",") if p.strip())
    if not chosen <= _EXPOSABLE:
        raise SettingsError(f"{name}={raw!r}: expected stats and/or metrics")
    return chosen


def _check_together(kw: Mapping[str, Any]) -> None:
    """The rules that bind several settings."""
    protocol = kw.get("kafka_security_protocol", "PLAINTEXT")
    if protocol.startswith("SASL") and not (kw.get("kafka_sasl_username") and kw.get("kafka_sasl_password")):
        raise SettingsError(f"{protocol} needs {PREFIX}KAFKA_SASL_USERNAME and {PREFIX}KAFKA_SASL_PASSWORD")
    if ("tls_cert" in kw) != ("tls_key" in kw):
        raise SettingsError(f"{PREFIX}TLS_CERT and {PREFIX}TLS_KEY go together")
    if "tls_client_ca" in kw and "tls_cert" not in kw:
        raise SettingsError(f"{PREFIX}TLS_CLIENT_CA needs {PREFIX}TLS_CERT and {PREFIX}TLS_KEY")


def _default(f: dataclasses.Field[Any]) -> str:
    info = _info(f)
    if info.shown:
        return info.shown
    value = f.default
    if value is None or value == "":
        return "unset"
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown() -> str:
    """The configuration page of the documentation (docs/configuration.md), made from the table above."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `python -m broker.settings` from broker/settings.py; do not edit. -->",
        "",
        "Every part reads its configuration from environment variables prefixed `NDXP_`, and only from",
        "them (`broker/settings.py` is their one reader). A value that cannot be used stops the part with",
        "one line naming the variable (exit 2).",
        "",
        "| variable | default | bounds | what |",
        "| --- | --- | --- | --- |",
    ]
    for f in configurable():
        info = _info(f)
        bounds = []
        if info.minimum is not None:
            bounds.append(f">= {info.minimum:g}")
        if info.maximum is not None:
            bounds.append(f"<= {info.maximum:g}")
        if info.choices:
            bounds.append(" / ".join(info.choices))
        name = f"`{PREFIX}{info.env or f.name.upper()}`" + (f" (or `{info.also}`)" if info.also else "")
        lines.append(f"| {name} | {_default(f)} | {', '.join(bounds)} | {info.help} |")
    return "\n".join(lines) + "\n"


def child_environment(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment for a child process of the platform: ours, plus ``NDXP_*`` overrides."""
    env = dict(os.environ)
    if settings.kafka_bootstrap:
        env[PREFIX + "KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    if settings.kafka_security_protocol != "PLAINTEXT":  # a secure local Kafka: how to reach it
        env[PREFIX + "KAFKA_SECURITY_PROTOCOL"] = settings.kafka_security_protocol
        env[PREFIX + "KAFKA_SASL_MECHANISM"] = settings.kafka_sasl_mechanism
        for name in ("kafka_sasl_username", "kafka_sasl_password", "kafka_ssl_cafile"):
            if getattr(settings, name) is not None:
                env[PREFIX + name.upper()] = str(getattr(settings, name))
    env.update({PREFIX + k: v for k, v in overrides.items()})
    return env


if __name__ == "__main__":
    sys.stdout.write(markdown())
