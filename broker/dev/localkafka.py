"""Apache Kafka on loopback: jars via Maven Central, KRaft, 1 or 3 nodes.

Kafka comes from ``NDXP_KAFKA_HOME``/``KAFKA_HOME`` when that points at an
unpacked distribution; otherwise the broker's jars and their dependencies are
resolved once with ``mvn`` into ``<cache>/kafka-<version>/lib`` and reused.

Each node is a combined broker+controller on free 127.0.0.1 ports with a
small heap, logging to ``<data>/node-<id>/logs/server.log``. With a
``data_dir`` the cluster layout (ports, cluster id) and data survive a
restart; without one a temporary directory is used and removed on stop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from filelock import FileLock

from broker.dev.ports import free_port, port_is_free
from broker.errors import LocalKafkaError
from broker.kafka import cluster_brokers
from broker.settings import Settings

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
_EXTRA_DEPENDENCIES = (
    # Kafka 4 logs through SLF4J 2; give it Log4j 2 as the backend.
    ("org.slf4j", "slf4j-api", "2.0.17"),
    ("org.apache.logging.log4j", "log4j-slf4j2-impl", "2.24.3"),
    ("org.apache.logging.log4j", "log4j-core", "2.24.3"),
)
KAFKA_STOP_GRACE_S = 30.0

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# --------------------------------------------------------------------------
# Prerequisites and jar resolution


def check_java() -> str:
    """Path of a Java 17+ runtime, or an actionable error."""
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError(
            "Java 17 or newer is needed to run Apache Kafka and `java` is not on PATH: "
            "install it (Debian: apt-get install openjdk-17-jre-headless), "
            "or set NDXP_KAFKA_BOOTSTRAP to use an existing cluster"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False, timeout=60).stderr
    match = re.search(r'version "(\d+)', out)
    if match and int(match.group(1)) < 17:
        raise LocalKafkaError(f"Apache Kafka {KAFKA_VERSION} needs Java 17+, found: {out.strip()}")
    return java


def _pom() -> str:
    deps = [("org.apache.kafka", f"kafka_{SCALA_VERSION}", KAFKA_VERSION), *_EXTRA_DEPENDENCIES]
    body = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>ndxp.local</groupId><artifactId>kafka-runtime</artifactId>"
        "<version>1</version>\n"
        f"  <dependencies>\n{body}\n  </dependencies>\n</project>\n"
    )


def resolve_classpath(settings: Settings, progress: Progress = _quiet) -> str:
    """The Java classpath of Apache Kafka, resolving jars with Maven once."""
    if settings.kafka_home is not None:
        libs = settings.kafka_home / "libs"
        if not any(libs.glob("kafka_*.jar")):
            raise LocalKafkaError(
                f"NDXP_KAFKA_HOME/KAFKA_HOME={settings.kafka_home} is not an unpacked Apache "
                "Kafka (no libs/kafka_*.jar): unset it to resolve Kafka from Maven Central"
            )
        return f"{libs}/*"
    home = settings.cache_dir / f"kafka-{KAFKA_VERSION}"
    lib = home / "lib"
    if (home / ".complete").exists():
        return f"{lib}/*"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError(
            "Maven (`mvn`) is needed once to fetch Apache Kafka's jars and is not on PATH: "
            "install it (Debian: apt-get install maven), point NDXP_KAFKA_HOME at an "
            "unpacked Kafka, or set NDXP_KAFKA_BOOTSTRAP to use an existing cluster"
        )
    lock = settings.cache_dir / f"kafka-{KAFKA_VERSION}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock):  # one resolver at a time: parallel test sessions share the cache
        if (home / ".complete").exists():  # another process resolved it meanwhile
            return f"{lib}/*"
        progress(f"resolving Apache Kafka {KAFKA_VERSION} jars from Maven Central into {lib} (once)")
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="resolve-", dir=settings.cache_dir))
        try:
            (work / "pom.xml").write_text(_pom())
            cmd = [
                mvn, "-B", "-f", str(work / "pom.xml"),
                "dependency:copy-dependencies", "-DincludeScope=runtime",
                f"-DoutputDirectory={work / 'lib'}",
            ]  # fmt: skip
            tail: list[str] = []
            fetched = 0
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    tail = [*tail[-30:], line.rstrip()]
                    if line.startswith("Downloaded from"):
                        fetched += 1
                        if fetched % 25 == 0:
                            progress(f"  maven: {fetched} files downloaded")
            if proc.returncode != 0:
                raise LocalKafkaError("Maven could not resolve Apache Kafka's jars:\n" + "\n".join(tail))
            if lib.exists():
                shutil.rmtree(lib)
            home.mkdir(parents=True, exist_ok=True)
            (work / "lib").rename(lib)
            (home / ".complete").write_text(KAFKA_VERSION)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        jars = len(list(lib.glob("*.jar")))
        progress(f"resolved {jars} jars in {time.monotonic() - started:.1f}s")
    return f"{lib}/*"


# --------------------------------------------------------------------------
# Cluster layout


def new_cluster_id() -> str:
    """A Kafka cluster id (base64 of a UUID) that does not start with '-'.

    Kafka's own ``random-uuid`` avoids a leading '-' as well: command lines
    would take such an id for an option.
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    """One combined broker+controller node."""

    node_id: int
    port: int
    controller_port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """What a data directory holds: cluster id and node ports, kept across restarts."""

    cluster_id: str
    nodes: tuple[NodeSpec, ...]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @classmethod
    def new(cls, count: int) -> Layout:
        ports: set[int] = set()
        while len(ports) < 2 * count:
            ports.add(free_port())
        it = iter(sorted(ports))
        nodes = tuple(
            NodeSpec(node_id=i, port=next(it), controller_port=next(it)) for i in range(1, count + 1)
        )
        return cls(cluster_id=new_cluster_id(), nodes=nodes)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Layout:
        raw = json.loads(path.read_text())
        return cls(
            cluster_id=raw["cluster_id"],
            nodes=tuple(NodeSpec(**n) for n in raw["nodes"]),
        )


SCRAM_USER = "ndxp"


def _secure_properties(node: NodeSpec, tls: Path, password: str) -> dict[str, object]:
    """A SASL_SSL listener (SCRAM-SHA-512 over TLS) for clients and brokers; the controller stays local.

    Kafka's StandardAuthorizer is on: the platform's own parts connect as the super user
    (``SCRAM_USER``); a member's adapter as its own user, with only the ACLs the management API
    grants it (``broker/kafka/members.py``); anyone else gets nothing. The controller listener is
    loopback PLAINTEXT between the nodes (its principal, ANONYMOUS, is a super user too)."""
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{SCRAM_USER}" password="{password}";'
    )
    return {
        "listeners": f"SASL_SSL://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{node.port}",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": tls / "broker.pem",
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": tls / "ca.pem",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{SCRAM_USER};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
    }


def _server_properties(
    layout: Layout, node: NodeSpec, node_dir: Path, secure: dict[str, object] | None = None
) -> str:
    n = len(layout.nodes)
    voters = ",".join(f"{s.node_id}@127.0.0.1:{s.controller_port}" for s in layout.nodes)
    props = {
        "node.id": node.node_id,
        "process.roles": "broker,controller",
        "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.quorum.voters": voters,
        "log.dirs": node_dir / "data",
        "num.partitions": 1,
        "default.replication.factor": min(3, n),
        "min.insync.replicas": min(2, n),
        "offsets.topic.replication.factor": min(3, n),
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": min(3, n),
        "transaction.state.log.min.isr": min(2, n),
        "transaction.state.log.num.partitions": 10,
        "share.coordinator.state.topic.replication.factor": min(3, n),
        "share.coordinator.state.topic.min.isr": min(2, n),
        "group.initial.rebalance.delay.ms": 0,
        # Failover (decision record 0010): a dead broker stays in every ISR, holding each acks=all
        # write, until the controller fences it. On 3 nodes it is fenced after 3 s without a
        # heartbeat (default 9 s), a heartbeat every 0.5 s; one node is never fenced (nowhere to
        # move). A follower that stops fetching but still beats leaves the ISR after 10 s (not 30).
        **({"broker.session.timeout.ms": 3000, "broker.heartbeat.interval.ms": 500} if n > 1 else {}),
        "replica.lag.time.max.ms": 10000,
        "auto.create.topics.enable": "false",
        "num.network.threads": 2,
        "num.io.threads": 4,
        "log.retention.hours": 168,
        **(secure or {}),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _log4j2_properties(log_file: Path) -> str:
    return (
        "status = warn\n"
        "appender.file.type = RollingFile\n"
        "appender.file.name = FILE\n"
        f"appender.file.fileName = {log_file}\n"
        f"appender.file.filePattern = {log_file}.%i\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "appender.file.policies.type = Policies\n"
        "appender.file.policies.size.type = SizeBasedTriggeringPolicy\n"
        "appender.file.policies.size.size = 20MB\n"
        "appender.file.strategy.type = DefaultRolloverStrategy\n"
        "appender.file.strategy.max = 3\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.file.ref = FILE\n"
    )


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no {path})"


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a child of ours that exited stays a zombie until reaped: not alive)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _is_our_kafka(pid: int, node_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, PermissionError):
        return False
    return "kafka.Kafka" in cmdline and str(node_dir) in cmdline


# --------------------------------------------------------------------------
# The cluster


class LocalKafka:
    """A local Apache Kafka cluster of 1 or 3 KRaft nodes on 127.0.0.1.

    Use :meth:`start` and :meth:`stop`, or ``with LocalKafka(...) as kafka``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        nodes: int = 1,
        data_dir: Path | None = None,
        progress: Progress = _quiet,
        secure: bool = False,
    ) -> None:
        """``secure``: listen with SASL_SSL (SCRAM-SHA-512 over TLS, a CA made for it) instead of
        PLAINTEXT; :meth:`client_settings` tells clients how to connect."""
        if nodes not in (1, 3):
            raise LocalKafkaError(f"--nodes must be 1 or 3, not {nodes}")
        self.settings = settings
        self.node_count = nodes
        self.temporary = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="ndxp-kafka-")) if data_dir is None else data_dir.resolve()
        )
        self.progress = progress
        self.secure = secure
        self.layout: Layout | None = None
        self.pids: dict[int, int] = {}
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._classpath: str | None = None

    # -- security (SASL_SSL)
    def _pki(self) -> Path:
        """A CA and the brokers' certificate (for 127.0.0.1), made once per data directory."""
        tls = self.data_dir / "tls"
        if (tls / "broker.pem").exists():
            return tls
        tls.mkdir(parents=True, exist_ok=True)

        def openssl(*args: str) -> None:
            run = subprocess.run(["openssl", *args], cwd=tls, capture_output=True, check=False)
            if run.returncode != 0:
                raise LocalKafkaError(f"openssl {args[0]} failed: {run.stderr.decode(errors='replace')}")

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                "-days", "3650", "-subj", "/CN=ndxp local Kafka CA")  # fmt: skip
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
                "-subj", "/CN=127.0.0.1")  # fmt: skip
        (tls / "broker.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "broker.crt", "-days", "3650", "-extfile", "broker.ext")  # fmt: skip
        (tls / "broker.pem").write_text((tls / "broker.key").read_text() + (tls / "broker.crt").read_text())
        return tls

    def _password(self) -> str:
        path = self.data_dir / "tls" / "scram-password"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(18))
            path.chmod(0o600)
        return path.read_text().strip()

    def _scram_args(self) -> list[str]:
        if not self.secure:
            return []
        return ["--add-scram", f"SCRAM-SHA-512=[name={SCRAM_USER},password={self._password()}]"]

    def client_settings(self) -> Settings:
        """``settings`` for clients of this cluster: its bootstrap and, when secure, SASL_SSL."""
        settings = self.settings.replace(kafka_bootstrap=self.bootstrap)
        if not self.secure:
            return settings
        return settings.replace(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username=SCRAM_USER,
            kafka_sasl_password=self._password(),
            kafka_ssl_cafile=self.data_dir / "tls" / "ca.pem",
        )

    # -- paths
    def node_dir(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}"

    def log_file(self, node_id: int) -> Path:
        return self.node_dir(node_id) / "logs" / "server.log"

    @property
    def bootstrap(self) -> str:
        if self.layout is None:
            raise LocalKafkaError("the local Kafka is not started")
        return self.layout.bootstrap

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of every node's broker log (and JVM output)."""
        parts = []
        for node_id in range(1, self.node_count + 1):
            parts.append(f"--- node {node_id}: {self.log_file(node_id)}")
            parts.append(_tail(self.log_file(node_id), lines))
            out = self.node_dir(node_id) / "logs" / "stdout.log"
            if out.exists() and out.stat().st_size:
                parts.append(f"--- node {node_id}: {out}")
                parts.append(_tail(out, lines))
        return "\n".join(parts)

    # -- lifecycle
    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _prepare(self) -> Layout:
        layout_file = self.data_dir / "cluster.json"
        if layout_file.exists():
            layout = Layout.load(layout_file)
            if len(layout.nodes) != self.node_count:
                raise LocalKafkaError(
                    f"{self.data_dir} holds a {len(layout.nodes)}-node cluster; "
                    f"start it with --nodes {len(layout.nodes)} or use another --data-dir"
                )
            busy = [p for n in layout.nodes for p in (n.port, n.controller_port) if not port_is_free(p)]
            if busy:
                raise LocalKafkaError(
                    f"ports {busy} of the cluster in {self.data_dir} are in use: is it already "
                    "running (`ndxp kafka stop`), or another program holding them?"
                )
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            layout = Layout.new(self.node_count)
            layout.save(layout_file)
        for node in layout.nodes:
            nd = self.node_dir(node.node_id)
            (nd / "logs").mkdir(parents=True, exist_ok=True)
            secure = _secure_properties(node, self._pki(), self._password()) if self.secure else None
            (nd / "server.properties").write_text(_server_properties(layout, node, nd, secure))
            (nd / "log4j2.properties").write_text(_log4j2_properties(self.log_file(node.node_id)))
        return layout

    def _java(self, node_id: int, main: str, *args: str, heap_mb: int) -> list[str]:
        assert self._classpath is not None
        nd = self.node_dir(node_id)
        return [
            "java",
            f"-Xms{min(heap_mb, 256)}m",
            f"-Xmx{heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={nd / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={nd / 'logs'}",
            "-cp",
            self._classpath,
            main,
            *args,
        ]

    def _format(self, layout: Layout) -> None:
        todo = [
            n for n in layout.nodes if not (self.node_dir(n.node_id) / "data" / "meta.properties").exists()
        ]
        if not todo:
            return
        self.progress(f"formatting KRaft storage of {len(todo)} node(s)")
        procs = []
        for n in todo:
            props = self.node_dir(n.node_id) / "server.properties"
            cmd = self._java(
                n.node_id, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                f"--cluster-id={layout.cluster_id}", "-c", str(props), *self._scram_args(), heap_mb=256,
            )  # fmt: skip
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for p in procs:
            out, _ = p.communicate(timeout=120)
            if p.returncode != 0:
                raise LocalKafkaError(f"formatting Kafka storage failed:\n{out.decode(errors='replace')}")

    def start_node(self, node_id: int) -> None:
        """Start one node of an already-laid-out cluster (used by start and failure tests)."""
        if node_id in self._procs and self._procs[node_id].poll() is None:
            return
        nd = self.node_dir(node_id)
        out = (nd / "logs" / "stdout.log").open("ab")
        cmd = self._java(
            node_id,
            "kafka.Kafka",
            str(nd / "server.properties"),
            heap_mb=self.settings.kafka_heap_mb,
        )
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        self._procs[node_id] = proc
        self.pids[node_id] = proc.pid

    def start(self) -> str:
        """Start the cluster; return its bootstrap address once all brokers are up."""
        check_java()
        self._classpath = resolve_classpath(self.settings, self.progress)
        started = time.monotonic()
        self.layout = self._prepare()
        self._format(self.layout)
        self.progress(f"starting {self.node_count} Kafka node(s) in {self.data_dir}")
        try:
            for node in self.layout.nodes:
                self.start_node(node.node_id)
            self.wait_ready(self.node_count)
        except BaseException:
            self.stop()
            raise
        self.progress(f"Kafka ready at {self.bootstrap} in {time.monotonic() - started:.1f}s")
        return self.bootstrap

    def wait_ready(self, brokers: int) -> None:
        """Wait until the cluster reports ``brokers`` brokers; raise with the log tail if not."""
        deadline = time.monotonic() + self.settings.kafka_start_timeout_s
        last_error = "no answer yet"
        next_note = time.monotonic() + 10
        while time.monotonic() < deadline:
            for node_id, proc in self._procs.items():
                if proc.poll() is not None:
                    raise LocalKafkaError(
                        f"Kafka node {node_id} exited with code {proc.returncode} during start-up\n"
                        + self.log_tail()
                    )
            try:
                # Probe the ports first: the Kafka client logs every refused connection.
                assert self.layout is not None
                for node in self.layout.nodes:
                    socket.create_connection(("127.0.0.1", node.port), timeout=1).close()
                seen = asyncio.run(cluster_brokers(self.client_settings()))
                if seen >= brokers:
                    return
                last_error = f"{seen} of {brokers} brokers registered"
            except Exception as exc:  # broker can still be loading cluster layout
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > next_note:
                self.progress(f"  waiting for Kafka ({last_error})")
                next_note = time.monotonic() + 10
            time.sleep(0.5)
        raise LocalKafkaError(
            f"Kafka did not report {brokers} broker(s) within "
            f"{self.settings.kafka_start_timeout_s:.0f}s ({last_error})\n" + self.log_tail()
        )

    def stop_node(self, node_id: int, *, grace: float = KAFKA_STOP_GRACE_S) -> None:
        """Stop one node: SIGTERM, then SIGKILL after ``grace`` seconds."""
        pid = self.pids.pop(node_id, None)
        proc = self._procs.pop(node_id, None)
        if pid is not None:
            _terminate([(pid, proc)], grace)

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would (no controlled shutdown), and reap it; ``start_node``
        starts it again."""
        pid = self.pids.pop(node_id, None)
        proc = self._procs.pop(node_id, None)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _terminate([(pid, proc)], grace=0)  # reaps it (a SIGTERM to a dead process changes nothing)

    def stop(self, *, grace: float = KAFKA_STOP_GRACE_S) -> None:
        """Stop every node (all at once, so no quorum is left waiting) and clean up."""
        victims = [(pid, self._procs.get(node_id)) for node_id, pid in self.pids.items()]
        _terminate(victims, grace)
        self.pids.clear()
        self._procs.clear()
        if self.temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- state file, so that `ndxp kafka stop` works from another shell
    def save_state(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "bootstrap": self.bootstrap,
            "data_dir": str(self.data_dir),
            "temporary": self.temporary,
            "nodes": self.node_count,
            "secure": self.secure,
            "pids": {str(k): v for k, v in self.pids.items()},
        }
        path.write_text(json.dumps(state, indent=2))

    @classmethod
    def from_state(cls, settings: Settings, path: Path) -> LocalKafka:
        state = json.loads(path.read_text())
        kafka = cls(settings, nodes=int(state["nodes"]), data_dir=Path(state["data_dir"]),
                    secure=bool(state.get("secure", False)))  # fmt: skip
        kafka.temporary = bool(state["temporary"])
        kafka.layout = Layout.load(kafka.data_dir / "cluster.json")
        kafka.pids = {
            int(k): int(v) for k, v in state["pids"].items() if _is_our_kafka(int(v), kafka.node_dir(int(k)))
        }
        return kafka

    def running(self) -> bool:
        return any(_pid_alive(pid) for pid in self.pids.values())


def _terminate(victims: list[tuple[int, subprocess.Popen[bytes] | None]], grace: float) -> None:
    for pid, _ in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid, proc in victims:
        while _pid_alive(pid) and time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.1)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait()
        else:
            while _pid_alive(pid):
                time.sleep(0.05)


def state_file(settings: Settings) -> Path:
    """Where `ndxp kafka start` records the cluster it started."""
    return settings.cache_dir / "run" / "kafka.json"
