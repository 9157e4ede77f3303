"""`ndxp up`: the whole platform on this machine, and Ctrl-C stops all of it.

Starts a local Apache Kafka (unless NDXP_KAFKA_BOOTSTRAP is set), the
adapters of every simulated agency the catalog has, and the gateway, each
part as its own process; prints the URL, demo keys and a curl example.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import uvloop

from broker.commands import STANDBY
from broker.contracts.catalog import Catalog
from broker.contracts.registry import Registry
from broker.dev.localkafka import LocalKafka
from broker.dev.ports import free_port, port_is_free
from broker.errors import PlatformError
from broker.kafka.registry import RegistryFollower, seed_if_empty
from broker.ops.status import state_path
from broker.settings import Settings, child_environment

PART_STOP_GRACE_S = 20.0
RESTART_BACKOFF_S = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
"""Waits before restarting a part that died: none the first time (a static group member is back
before its session times out), then growing while it keeps dying."""
STABLE_AFTER_S = 60.0
"""A part up this long counts as healthy again: its next restart waits the shortest time."""


def _wait_ready(url: str, procs: list[subprocess.Popen[bytes]], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise PlatformError(f"{shlex.join(map(str, p.args))} exited with {p.returncode}")  # type: ignore[arg-type]
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2) as resp,  # noqa: S310 - loopback URL
        ):
            if resp.status == 200:
                return
        time.sleep(0.3)
    raise PlatformError(f"{url} was not ready within {within_s:.0f}s")


SUPERVISE_EVERY_S = 0.1
"""How often ``ndxp up`` looks for a part that died: its first restart follows within this."""


SPARE_AFTER_S = 5.0
"""A new warm spare is made this long after the last one took over (not during its start)."""


class Supervised:
    """One part of the platform as a child process, restarted with backoff when it dies.

    With ``spare``, a warm spare waits beside it (``NDXP_STANDBY=1``: interpreter up, modules
    imported, nothing connected): the first restart hands over to it, which saves the part's own
    start (about 0.4 s of a 0.7 s adapter restart here, more on a busy machine)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], *, spare: bool = False) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.proc = subprocess.Popen(argv, env=env)
        self.started = time.monotonic()
        self.failures = 0
        self.restart_at: float | None = None
        self.wants_spare = spare
        self.spare: subprocess.Popen[bytes] | None = None
        self.spare_at = self.started + SPARE_AFTER_S

    def _restart(self) -> str:
        """Start the part again: its warm spare if one is waiting, else a new process; how."""
        spare, self.spare = self.spare, None
        self.spare_at = time.monotonic() + SPARE_AFTER_S
        if spare is not None and spare.poll() is None and spare.stdin is not None:
            try:
                spare.stdin.write(b"go\n")
                spare.stdin.close()
            except OSError:  # it died just now: a new process instead
                _stop(spare)
            else:
                self.proc = spare
                return "its warm spare took over"
        self.proc = subprocess.Popen(self.argv, env=self.env)
        return "started again"

    def check(self, progress: Callable[[str], Any]) -> None:
        """Restart the part if it died (after its backoff); log what happens; keep its spare ready."""
        now = time.monotonic()
        if self.restart_at is None:
            code = self.proc.poll()
            if code is None:
                if self.spare is not None and self.spare.poll() is not None:  # the spare died
                    _stop(self.spare)
                    self.spare = None
                if self.wants_spare and self.spare is None and now >= self.spare_at:
                    self.spare_at = now + SPARE_AFTER_S  # one that keeps dying is made again only so often
                    self.spare = subprocess.Popen(
                        self.argv, env={**self.env, STANDBY: "1"}, stdin=subprocess.PIPE
                    )
                return
            if now - self.started >= STABLE_AFTER_S:
                self.failures = 0
            wait = RESTART_BACKOFF_S[min(self.failures, len(RESTART_BACKOFF_S) - 1)]
            self.failures += 1
            self.restart_at = now + wait
            progress(f"ndxp up: {self.name} exited with {code}; restarting in {wait:g}s")
        if now >= self.restart_at:
            self.restart_at = None
            how = self._restart()
            self.started = now
            progress(f"ndxp up: {self.name} restarted (pid {self.proc.pid}: {how})")

    def stop(self) -> None:
        self.restart_at = None
        if self.spare is not None:
            _stop(self.spare)
            self.spare = None
        _stop(self.proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after the grace; reaped (a spare's stdin closed)."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(PART_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _port(preferred: int) -> int:
    """``preferred`` if it is free (the port deploy/prometheus scrapes), else any free port."""
    return preferred if port_is_free(preferred) else free_port()


def demo_text(settings: Settings, base_url: str) -> str:
    """What `ndxp up` prints: URLs, demo keys and a ready-to-paste curl."""
    catalog = Catalog.load(settings.schemas_dir)
    registry = Registry.load(settings.registry_path, catalog)
    admin_url = f"http://{settings.admin_host}:{settings.admin_port}/admin/v1"
    lines = [
        f"NDXP gateway: {base_url}",
        "  catalog: " + base_url + "/v1/services",
        f"management API: {admin_url} (operator key demo-ops; `ndxp admin --key demo-ops agencies list`)",
    ]
    lines.append(
        f"  openapi: {base_url}/openapi.json   stats: {base_url}/v1/stats (a key: its rows; demo-ops: all)"
    )
    lines.append("demo API keys (client → key):")
    example: tuple[str, str, Any] | None = None
    for agency in registry:
        key = f"demo-{agency.id}"
        if registry.authenticate(key) is None:
            continue
        allowed = registry.allowed_services(agency.id)
        publish, subscribe = registry.allowed_events(agency.id)
        rights = [
            f"{what} {len(names)} {noun}"
            for what, names, noun in (
                ("may call", allowed, "service(s)"),
                ("publishes", publish, "event type(s)"),
                ("subscribes to", subscribe, "event type(s)"),
            )
            if names
        ]
        if not rights:
            continue
        lines.append(f"  {agency.id:10} {key:18} " + ", ".join(rights))
        for name in allowed:
            provider, service = name.split("/", 1)
            svc = catalog.get(provider, service)
            if example is None and svc is not None and svc.examples:
                example = (key, name, svc.examples[0])
    if example is not None:
        key, name, body = example
        lines.append("try:")
        lines.append(
            f"  curl -s -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
            f"-d '{orjson.dumps(body).decode()}' {base_url}/v1/exchange/{name}"
        )
    if catalog.events:
        lines.append("live events (start with --changes 5 to see some flow):")
        lines.append(
            "  curl -N -H 'Authorization: Bearer demo-hanoi' -H 'Accept: text/event-stream' "
            f"{base_url}/v1/events/bca/address_changed"
        )
    return "\n".join(lines)


def _import_registry(settings: Settings) -> str:
    """The demo's registry and contracts into the live registry, if it is empty (a kept --data-dir
    Kafka keeps what was changed through the management API)."""

    async def run() -> str:
        follower = RegistryFollower(settings, part="up")
        await follower.start()
        try:
            if await seed_if_empty(settings, follower):
                await follower.caught_up()
                return (f"registry: imported {settings.registry_path.name} and {settings.schemas_dir.name}/ "
                        f"into the live registry ({follower.live.applied} documents)")  # fmt: skip
            return f"registry: the live registry has {follower.live.applied} records; kept as it is"
        finally:
            await follower.stop()

    return uvloop.run(run())


LOAD_TEST_FACTOR = 1000
"""``ndxp up --load-test-limits`` and the benchmarks raise every agency's rate limit this much."""


def load_test_registry(
    source: Path, out: Path, factor: int = LOAD_TEST_FACTOR, limits: Mapping[str, float] | None = None
) -> Path:
    """A copy of the registry file ``source`` at ``out`` with every agency's rate limit raised
    ``factor``-fold (one without a limit from NDXP_DEFAULT_RATE_LIMIT's default: providers publish
    events): a load test then measures the platform, not the demo clients' own limits (``vcb``'s
    100/s answers 429 first). ``limits``: agencies whose limit is set as given instead (a limit's
    own test)."""
    import yaml

    default = Settings().default_rate_limit
    registry = yaml.safe_load(source.read_text())
    for agency in registry["agencies"]:
        agency["rate_limit"] = (limits or {}).get(agency["id"], agency.get("rate_limit", default) * factor)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(registry, allow_unicode=True))
    return out


def _subject_secret(settings: Settings) -> str:
    """The local platform's data-tracker secret: made on first use in CACHE_DIR, kept (0600)."""
    path = settings.cache_dir / "subject.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def run_platform(
    settings: Settings,
    *,
    data_dir: Path | None = None,
    changes: float | None = None,
    progress: Callable[[str], Any] = print,
    secure: bool = False,
) -> int:
    """Run everything until SIGINT/SIGTERM; return the exit code. ``secure``: the local Kafka speaks
    SASL_SSL with ACLs, the platform's parts connect as its super user."""
    stopping = False

    def on_signal(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    parts: list[Supervised] = []
    kafka: LocalKafka | None = None
    audit_tmp: Path | None = None
    if not port_is_free(settings.port):
        progress(f"ndxp up: port {settings.port} is in use; choose another with --port")
        return 1
    if not port_is_free(settings.admin_port):
        progress(f"ndxp up: the management API's port {settings.admin_port} is in use; set NDXP_ADMIN_PORT")
        return 1
    try:
        if not settings.kafka_bootstrap:
            kafka = LocalKafka(settings, nodes=1, data_dir=data_dir, progress=progress, secure=secure)
            kafka.start()
            settings = kafka.client_settings()
            if secure:
                progress(
                    f"Kafka: SASL_SSL with ACLs at {settings.kafka_bootstrap} "
                    f"(CA {settings.kafka_ssl_cafile}); a member adapter's user: "
                    "POST /admin/v1/agencies/<id>/kafka-credentials"
                )
        catalog = Catalog.load(settings.schemas_dir)
        progress(_import_registry(settings))
        ndxp = [sys.executable, "-m", "broker.cli"]
        # The agencies' own backends (land: REST, social insurance: SOAP), reached through the
        # bindings of their services: each binding's ${env:BACKEND} is its provider's backend here.
        backends = {"land": ("tnmt", free_port()), "bhxh": ("bhxh", free_port())}
        urls = {f"BINDING_{p.upper()}_BACKEND": f"http://127.0.0.1:{port}" for p, port in backends.values()}
        # The exchange log: its index beside this Kafka's data (a new Kafka, a new log), and the data
        # tracker's subject secret, made once and kept.
        audit_port = _port(settings.audit_port)
        if data_dir is None:
            audit_tmp = Path(tempfile.mkdtemp(prefix="ndxp-audit-"))
            audit_db = audit_tmp / "audit.sqlite"
        else:
            audit_db = data_dir / "audit.sqlite"
        env = child_environment(
            settings, **urls, AUDIT_PORT=str(audit_port), AUDIT_URL=f"http://127.0.0.1:{audit_port}",
            AUDIT_DB=str(audit_db), SUBJECT_SECRET=settings.subject_secret or _subject_secret(settings),
        )  # fmt: skip

        def start(name: str, *argv: str) -> list[subprocess.Popen[bytes]]:
            # Callers wait for the adapters: a warm spare stands by to take over at once.
            parts.append(Supervised(name, [*ndxp, *argv], env, spare=name == "adapters"))
            return [p.proc for p in parts]

        for name, (_, port) in backends.items():
            procs = start(f"{name} backend", "backend", name, "--port", str(port))
            _wait_ready(f"http://127.0.0.1:{port}/healthz", procs, within_s=30)
        adapter_metrics = _port(9101)
        counter_metrics = _port(9102)
        # The simulated agencies' code, and every bound service (those published later too).
        coded = [p for p in catalog.providers() if any(s.binding is None for s in catalog.of_provider(p))]
        start("adapters", "adapter", *coded, "--bound", "--metrics-port", str(adapter_metrics))
        procs = start("counter", "counter", "--metrics-port", str(counter_metrics))
        procs = start("audit", "audit", "serve", "--port", str(audit_port))
        keeper_metrics = _port(9103)
        procs = start("keeper", "keeper", "--metrics-port", str(keeper_metrics))
        # Callers' first requests must find the adapters in their consumer groups.
        _wait_ready(f"http://127.0.0.1:{adapter_metrics}/readyz", procs, within_s=120)
        procs = start("gateway", "gateway", "--port", str(settings.port), "--workers", str(settings.workers))
        base = f"http://{settings.host}:{settings.port}"
        _wait_ready(base + "/readyz", procs, within_s=60)
        if changes:
            start("changes", "changes", "--url", base, "--rate", f"{changes:g}")
        metrics = {"adapters": adapter_metrics, "counter": counter_metrics, "keeper": keeper_metrics,
                   "audit": audit_port}  # fmt: skip
        urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in metrics.items()}
        urls["admin"] = f"http://{settings.admin_host}:{settings.admin_port}/metrics"
        state = state_path(settings.cache_dir, settings.port)
        state.parent.mkdir(parents=True, exist_ok=True)
        # The demo registry's operator key, for `ndxp status` (the gateway's /metrics is an operator's).
        state.write_text(json.dumps({"gateway": base, "metrics": urls, "operator_key": "demo-ops"}))
        progress(demo_text(settings, base))
        progress(
            f"metrics: gateway {base}/metrics, adapters http://127.0.0.1:{adapter_metrics}/metrics, "
            f"counter http://127.0.0.1:{counter_metrics}/metrics, "
            f"keeper http://127.0.0.1:{keeper_metrics}/metrics, audit http://127.0.0.1:{audit_port}/metrics"
        )
        progress(f"platform up; Ctrl-C stops everything; an operator's view: ndxp status --url {base}")
        while True:  # supervise: a part that dies is restarted, with backoff
            for part in parts:
                part.check(progress)
            time.sleep(SUPERVISE_EVERY_S)
    except KeyboardInterrupt:
        progress("stopping the platform")
        return 0
    except PlatformError as exc:
        progress(f"ndxp up: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for part in reversed(parts):  # gateway first, then the counter, adapters, the backend
            part.stop()
        if kafka is not None:
            kafka.stop()
        if audit_tmp is not None:
            shutil.rmtree(audit_tmp, ignore_errors=True)
        state_path(settings.cache_dir, settings.port).unlink(missing_ok=True)
        for s, handler in old.items():
            signal.signal(s, handler)
        progress("stopped" if not stopping else "all parts stopped")
