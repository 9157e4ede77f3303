"""`ndxp up` as a newcomer runs it: starts everything, the printed curl works, Ctrl-C stops all."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import psutil
import pytest

from broker.contracts.catalog import Catalog
from broker.dev.ports import free_port
from broker.settings import Settings
from loadtests.running import cmdline, descendants, ndxp_up

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _operator(url: str) -> urllib.request.Request:
    """A request with the demo operator's key (every /v1/stats row)."""
    return urllib.request.Request(url, headers={"Authorization": "Bearer demo-ops"})


def test_ndxp_up_serves_the_printed_curl_restarts_a_dead_part_and_ctrl_c_stops_everything(
    base_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "NDXP_KAFKA_BOOTSTRAP"}
    env["NDXP_CACHE_DIR"] = str(base_settings.cache_dir)
    log = tmp_path / "up.log"
    with ndxp_up(["--port", str(port)], env, log, stop=signal.SIGINT) as proc:  # left by Ctrl-C
        text = log.read_text()
        assert "demo-" in text
        curl = next(line.strip() for line in text.splitlines() if line.strip().startswith("curl "))
        args = shlex.split(curl)
        headers = dict(h.split(": ", 1) for h in (args[i + 1] for i, a in enumerate(args) if a == "-H"))
        body = args[args.index("-d") + 1].encode()
        url = args[-1]
        assert url.startswith(f"http://127.0.0.1:{port}/v1/exchange/")
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
            answer = orjson.loads(resp.read())
        base = url.split("/v1/")[0]
        deadline = time.monotonic() + 30  # the counter counts it within moments
        while True:
            with urllib.request.urlopen(_operator(base + "/v1/stats"), timeout=10) as resp:
                stats = orjson.loads(resp.read())
            if stats["total"] >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert stats["total"] == 1
        assert stats["by_outcome"] == {"ok": 1}
        # The operator's view finds every part by itself (ndxp up's state file) and shows the count.
        status = subprocess.run(
            [sys.executable, "-m", "broker.cli", "status", "--once", "--url", base],
            env={**env, "COLUMNS": "160"}, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert status.returncode == 0, status.stdout + status.stderr
        for part in ("gateway", "adapters", "counter", "keeper"):
            assert re.search(rf"{part}\s+│ up", status.stdout), status.stdout
        assert "today 1" in status.stdout, status.stdout

        # A part that dies is restarted by `ndxp up`, and service comes back.
        (adapters,) = [p for p in descendants(proc.pid) if "broker.cli adapter" in cmdline(p)]
        os.kill(adapters, signal.SIGKILL)
        outcomes: list[int] = []
        deadline = time.monotonic() + 90
        while not outcomes or outcomes[-1] != 200:
            assert time.monotonic() < deadline, (outcomes, log.read_text())
            try:
                with urllib.request.urlopen(req, timeout=15) as resp:
                    outcomes.append(resp.status)
            except urllib.error.HTTPError as exc:  # 504 while the adapters rejoin their groups
                outcomes.append(exc.code)
                time.sleep(1)
        assert "adapters exited with -9; restarting" in log.read_text()
        assert "adapters restarted" in log.read_text()
        deadline = time.monotonic() + 30
        while stats["total"] < 1 + len(outcomes) and time.monotonic() < deadline:
            time.sleep(0.3)
            with urllib.request.urlopen(_operator(base + "/v1/stats"), timeout=10) as resp:
                stats = orjson.loads(resp.read())
        assert stats["total"] == 1 + len(outcomes), (stats, outcomes)
        provider, service = re.findall(r"/v1/exchange/([^/]+)/([^/]+)$", url)[0]
        contract = Catalog.load(base_settings.schemas_dir).get(provider, service)
        assert contract is not None
        assert contract.response.is_valid(answer), answer
        children = descendants(proc.pid)
        assert len(children) >= 5  # kafka, backend, adapters, counter, gateway (+ its workers)
    assert proc.returncode == 0, log.read_text()
    # Nothing left behind: every part exited (psutil waits for each one; reaped, it is gone).
    procs = []
    for pid in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, [cmdline(p.pid) for p in alive]
