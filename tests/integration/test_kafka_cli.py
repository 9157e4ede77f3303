"""`ndxp kafka start/status/stop` from a shell: prints the bootstrap, leaves nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.dev.localkafka import _pid_alive
from broker.kafka import cluster_brokers
from broker.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _ndxp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


async def test_kafka_start_status_stop_from_the_command_line(base_settings: Settings, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NDXP_KAFKA_BOOTSTRAP"}
    # Own state directory; the jars come from the shared cache (resolved once).
    env["NDXP_CACHE_DIR"] = str(tmp_path / "cache")
    env["NDXP_KAFKA_HOME"] = ""
    jars = base_settings.cache_dir / "kafka-4.1.1"
    if jars.exists():
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / "kafka-4.1.1").symlink_to(jars)
    started = _ndxp(env, "kafka", "start")
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip()
    assert bootstrap.startswith("127.0.0.1:")
    assert "ndxp kafka stop" in started.stderr
    state = json.loads((tmp_path / "cache" / "run" / "kafka.json").read_text())
    pids = list(state["pids"].values())
    try:
        assert await cluster_brokers(Settings(kafka_bootstrap=bootstrap)) == 1
        assert _ndxp(env, "kafka", "status").returncode == 0
        again = _ndxp(env, "kafka", "start")
        assert again.returncode == 1
        assert "already running" in again.stderr
        elsewhere = _ndxp(env, "kafka", "stop", "--data-dir", str(tmp_path / "elsewhere"))
        assert elsewhere.returncode == 1, "another directory's Kafka is not this one"
        assert "nothing stopped" in elsewhere.stderr
        assert _ndxp(env, "kafka", "status").returncode == 0
    finally:
        # The same --data-dir as `start` is accepted (a newcomer types it; it must not leave Kafka running).
        stopped = _ndxp(env, "kafka", "stop", "--data-dir", state["data_dir"])
    assert stopped.returncode == 0, stopped.stderr
    assert not any(_pid_alive(p) for p in pids)
    assert not Path(state["data_dir"]).exists()
    assert _ndxp(env, "kafka", "status").returncode == 1
