"""A real Prometheus server (Debian's `prometheus`) scrapes the gateway."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from broker.dev.ports import free_port
from broker.settings import Settings
from tests.integration.exchange_fixtures import EchoHandlers, running_adapter, running_gateway

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_prometheus_counts_exactly_the_exchanges_made(
    exchange_settings: Settings, provider: str, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("Debian's prometheus is needed: apt-get install prometheus (scripts/setup does it)")
    settings = exchange_settings
    async with (
        running_adapter(settings, provider, EchoHandlers()),
        running_gateway(settings) as (http, _),
    ):
        target = str(http._base_url).removeprefix("http://").rstrip("/")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "ndxp-gateway",
                            "static_configs": [{"targets": [target]}],
                            # /metrics on the exchange port is the operator's
                            "authorization": {"type": "Bearer", "credentials": "key-ops"},
                        }
                    ],
                }
            )
        )
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            made = 0
            for i in range(17):
                resp = await http.post(
                    f"/v1/exchange/{provider}/echo",
                    json={"msg": f"p{i}"} if i % 5 else {"msg": i},
                    headers={"Authorization": "Bearer key-alice"},
                )
                await resp.read()
                made += 1
            api = f"http://127.0.0.1:{port}/api/v1/query"
            value = None
            async with asyncio.timeout(60):
                while value != made:
                    await asyncio.sleep(0.5)
                    assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                    try:
                        async with http.get(api, params={"query": "sum(ndxp_exchanges_total)"}) as r:
                            result = (await r.json())["data"]["result"]
                    except OSError:
                        continue  # Prometheus still starting
                    value = int(float(result[0]["value"][1])) if result else None
            async with http.get(
                api, params={"query": 'sum(ndxp_exchanges_total{outcome="invalid_request"})'}
            ) as r:
                invalid = int(float((await r.json())["data"]["result"][0]["value"][1]))
            assert invalid == 4
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
    assert value == made


def test_every_dashboard_panel_shows_data_from_a_real_prometheus(settings: Settings, tmp_path: Path) -> None:
    """loadtests/dashboard.py: the platform under load, scraped by Debian's prometheus, every
    panel of the Grafana dashboard asked of Prometheus and drawn; it exits 1 on an empty panel,
    or if `ndxp status --prometheus` on the same Prometheus does not show every part up."""
    import os
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "NDXP_KAFKA_BOOTSTRAP": str(settings.kafka_bootstrap)}
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.dashboard", "--seconds", "20", "--out", str(tmp_path)],
        cwd=root, env=env, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "NO DATA" not in done.stdout
    assert (tmp_path / "dashboard.png").stat().st_size > 50_000
    frame = (tmp_path / "status.txt").read_text()
    for part in ("gateway", "adapters", "counter", "keeper"):
        assert re.search(rf"{part}\s+│ up", frame), frame
    rate = re.search(r"([0-9][0-9,]*\.[0-9])/s", frame)  # exchanges/s over Prometheus' last minute
    assert rate is not None, frame
    assert float(rate[1].replace(",", "")) > 0, frame
