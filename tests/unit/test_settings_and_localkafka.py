"""Settings parsing and the local Kafka's configuration, without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.dev import localkafka
from broker.dev.localkafka import Layout, LocalKafka
from broker.errors import LocalKafkaError, SettingsError
from broker.settings import Settings


def test_settings_read_only_prefixed_variables_with_explicit_casts() -> None:
    s = Settings.from_env({"NDXP_KAFKA_BOOTSTRAP": "127.0.0.1:9092", "NDXP_PORT": "9000", "PORT": "1"})
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.port == 9000


def test_settings_reject_a_non_integer_with_the_variable_name() -> None:
    with pytest.raises(SettingsError, match="NDXP_PORT"):
        Settings.from_env({"NDXP_PORT": "eighty"})


def test_kafka_home_falls_back_to_plain_kafka_home() -> None:
    assert Settings.from_env({"KAFKA_HOME": "/opt/kafka"}).kafka_home == Path("/opt/kafka")


def test_missing_java_gives_an_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("broker.dev.localkafka.shutil.which", lambda _: None)
    with pytest.raises(LocalKafkaError, match="apt-get install openjdk"):
        localkafka.check_java()


def test_missing_maven_gives_an_actionable_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("broker.dev.localkafka.shutil.which", lambda _: None)
    with pytest.raises(LocalKafkaError, match="apt-get install maven"):
        localkafka.resolve_classpath(Settings(cache_dir=tmp_path))


def test_kafka_home_without_jars_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(LocalKafkaError, match="not an unpacked Apache Kafka"):
        localkafka.resolve_classpath(Settings(kafka_home=tmp_path))


def test_only_one_or_three_nodes() -> None:
    with pytest.raises(LocalKafkaError, match="1 or 3"):
        LocalKafka(Settings(), nodes=2)


def test_layout_round_trips_and_three_nodes_are_replicated(tmp_path: Path) -> None:
    layout = Layout.new(3)
    layout.save(tmp_path / "cluster.json")
    assert Layout.load(tmp_path / "cluster.json") == layout
    props = localkafka._server_properties(layout, layout.nodes[0], tmp_path)
    assert "process.roles=broker,controller" in props
    assert "min.insync.replicas=2" in props
    assert "default.replication.factor=3" in props
    assert props.count("@127.0.0.1:") == 3
    assert len({p for n in layout.nodes for p in (n.port, n.controller_port)}) == 6


def test_restart_with_busy_port_names_the_port(tmp_path: Path) -> None:
    import socket

    layout = Layout.new(1)
    tmp_path.mkdir(exist_ok=True)
    layout.save(tmp_path / "cluster.json")
    with socket.socket() as s:
        s.bind(("127.0.0.1", layout.nodes[0].port))
        s.listen()
        kafka = LocalKafka(Settings(), nodes=1, data_dir=tmp_path)
        with pytest.raises(LocalKafkaError, match=str(layout.nodes[0].port)):
            kafka._prepare()


def test_cluster_ids_never_look_like_an_option() -> None:
    # About 1 in 64 random ids starts with '-'; the format tool would take it for a flag.
    assert not any(localkafka.new_cluster_id().startswith("-") for _ in range(2000))


def test_expose_and_internal_host_are_read_strictly() -> None:
    from broker.errors import SettingsError
    from broker.settings import Settings

    assert Settings.from_env({}).expose == frozenset()  # neither public: an operator's, or scoped
    assert Settings.from_env({"NDXP_EXPOSE": "metrics,stats"}).expose == {"stats", "metrics"}
    assert Settings.from_env({}).internal_host == "127.0.0.1"
    assert Settings.from_env({"NDXP_EXPOSE": ""}).expose == frozenset()
    assert Settings.from_env({"NDXP_EXPOSE": "stats"}).expose == {"stats"}
    with pytest.raises(SettingsError, match="EXPOSE"):
        Settings.from_env({"NDXP_EXPOSE": "stats,secrets"})


def test_tls_settings_come_in_pairs() -> None:
    from broker.errors import SettingsError
    from broker.settings import Settings

    ok = Settings.from_env(
        {"NDXP_TLS_CERT": "c.pem", "NDXP_TLS_KEY": "k.pem", "NDXP_TLS_CLIENT_CA": "ca.pem"}
    )
    assert (ok.tls_cert, ok.tls_client_ca) == (Path("c.pem"), Path("ca.pem"))
    with pytest.raises(SettingsError, match="together"):
        Settings.from_env({"NDXP_TLS_CERT": "c.pem"})
    with pytest.raises(SettingsError, match="CLIENT_CA"):
        Settings.from_env({"NDXP_TLS_CLIENT_CA": "ca.pem"})


def test_start_up_errors_are_one_branch_and_one_line_from_the_cli() -> None:
    import subprocess
    import sys

    from broker.errors import (
        AdapterSetupError,
        CatalogError,
        KafkaUnavailable,
        NdxpError,
        PlatformError,
        RegistryError,
        StartupError,
    )

    for cls in (SettingsError, CatalogError, RegistryError, KafkaUnavailable, LocalKafkaError, PlatformError,
                AdapterSetupError):  # fmt: skip
        assert issubclass(cls, StartupError), cls
        assert not issubclass(cls, NdxpError), f"{cls.__name__} is no HTTP answer"
    root = Path(__file__).resolve().parents[2]
    for env, code, says in (
        ({"NDXP_PORT": "abc"}, 2, "configuration error: NDXP_PORT='abc': expected an integer"),
        (
            {
                "NDXP_KAFKA_BOOTSTRAP": "127.0.0.1:1",
                "NDXP_REGISTRY_SEED": "1",
                "NDXP_SCHEMAS_DIR": "/nonexistent",
            },
            1,
            "/nonexistent: schemas directory not found",
        ),
        (
            {},
            1,
            "no Kafka configured: set NDXP_KAFKA_BOOTSTRAP=host:port, or start one with `ndxp kafka start`",
        ),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "broker.cli", "gateway", "--port", "18999"],
            env={"PATH": "/usr/bin:/bin", **env}, cwd=root, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == code, done.stderr
        assert done.stderr.strip().splitlines() == [f"ndxp: {says}"], done.stderr


def test_one_topic_prefix_names_every_topic_and_group_and_is_checked() -> None:
    s = Settings.from_env({"NDXP_TOPIC_PREFIX": "run-1"})
    n = s.names
    names = [
        s.tx_topic, s.stats_topic, s.exchanges_topic, n.requests("bca"), n.requests("bca", write=True),
        n.reply("host-w0"),
        n.reply_prefix, n.dlq("bca"), n.data("bca"), n.adapter_group("bca"), n.events("bca", "moved"),
        n.subscriber_group("c", "bca", "moved"),
    ]  # fmt: skip
    assert all(name.startswith("run-1.") for name in names), names
    assert len(set(names)) == len(names)
    # Set explicitly, a topic keeps its name; the others still follow the prefix.
    s = Settings.from_env({"NDXP_TOPIC_PREFIX": "run-1", "NDXP_TX_TOPIC": "audit.tx"})
    assert (s.tx_topic, s.stats_topic) == ("audit.tx", "run-1.stats")
    assert Settings.from_env({}).names.requests("bca") == "ndxp.req.bca.lookups"
    for bad in ("a b", "x/y", "a" * 101):
        with pytest.raises(SettingsError, match="NDXP_TOPIC_PREFIX"):
            Settings.from_env({"NDXP_TOPIC_PREFIX": bad})


def test_replace_keeps_derived_topic_names_under_the_new_prefix() -> None:
    moved = Settings().replace(topic_prefix="x")
    assert (moved.tx_topic, moved.stats_topic, moved.exchanges_topic) == ("x.tx", "x.stats", "x.exchanges")
    assert moved.names.requests("bca", write=True) == "x.req.bca.writes"
    # Set explicitly, a topic keeps its name when the prefix changes; given in the same call, it wins.
    kept = Settings.from_env({"NDXP_TX_TOPIC": "audit.tx"}).replace(topic_prefix="y")
    assert (kept.tx_topic, kept.stats_topic) == ("audit.tx", "y.stats")
    assert Settings().replace(topic_prefix="z", tx_topic="t").tx_topic == "t"


def test_every_setting_is_declared_once_with_its_variable_bounds_and_help() -> None:
    from broker.settings import configurable

    fields = configurable()
    assert {f.name for f in fields} == {f for f in Settings.__dataclass_fields__ if f != "names"}
    for f in fields:
        info = f.metadata["setting"]
        assert info.help, f.name
    # Bounds come from the declaration: below a minimum, above a maximum, outside the choices.
    for env, says in (
        ({"NDXP_WORKERS": "0"}, "NDXP_WORKERS='0': must be >= 1"),
        ({"NDXP_COUNTER_BATCH": "20001"}, "NDXP_COUNTER_BATCH must be at most 20000"),
        ({"NDXP_PORT": "70000"}, "NDXP_PORT must be at most 65535"),
        ({"NDXP_KAFKA_SECURITY_PROTOCOL": "tls"}, "NDXP_KAFKA_SECURITY_PROTOCOL='tls': one of"),
        ({"NDXP_DEFAULT_RATE_LIMIT": "fast"}, "NDXP_DEFAULT_RATE_LIMIT='fast': expected a number"),
    ):
        with pytest.raises(SettingsError) as caught:
            Settings.from_env(env)
        assert str(caught.value).startswith(says), caught.value
    assert Settings.from_env({"NDXP_KAFKA_SECURITY_PROTOCOL": "ssl"}).kafka_security_protocol == "SSL"
    assert Settings.from_env({"KAFKA_HOME": "/opt/kafka"}).kafka_home == Path("/opt/kafka")
    assert Settings.from_env({"NDXP_EXPOSE": ""}).expose == frozenset()
    secret = Settings.from_env({"NDXP_KAFKA_SASL_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(secret)
    assert "kafka_sasl_password='***'" in repr(secret)
