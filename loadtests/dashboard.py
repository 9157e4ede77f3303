"""Render the Grafana dashboard's panels from a real Prometheus that scraped a platform under load.

Starts a local Kafka (or uses NDXP_KAFKA_BOOTSTRAP), `ndxp up --changes N` on
it, Debian's `prometheus` scraping every part (the parts `ndxp up` wrote to
its state file), then for ``--seconds`` drives: the demo exchange mix (the
light generator), async exchanges, a few invalid requests (so that errors
show), and one live event subscriber. Then every panel of
``deploy/grafana/dashboards/ndxp-overview.json`` is asked of Prometheus's
HTTP API (``query_range``, each target's own expression) and drawn with
matplotlib: one PNG a panel and ``dashboard.png`` with them all. It prints,
per panel, how many series came back; it exits 1 if a panel has none.
Everything stays on 127.0.0.1; bounded in time.

    .venv/bin/python -m loadtests.dashboard --seconds 60 --out docs/dashboard
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from broker.dev.ports import free_port
from broker.lifecycle import sigterm_as_exit
from loadtests.bench import ROOT, kafka_bootstrap, running_platform

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ndxp-overview.json"


@contextmanager
def prometheus(tmp: Path, targets: dict[str, str]) -> Iterator[str]:
    """Debian's prometheus scraping ``targets`` (job → host:port) every second; its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("Debian's prometheus is needed: apt-get install prometheus (scripts/setup does it)")
    config = tmp / "prometheus.yml"
    jobs: list[dict[str, Any]] = [
        {"job_name": f"ndxp-{job}", "static_configs": [{"targets": [t]}]} for job, t in targets.items()
    ]
    # The gateway's /metrics takes an operator's key (the demo registry's operator).
    for job in jobs:
        if job["job_name"] == "ndxp-gateway":
            job["authorization"] = {"type": "Bearer", "credentials": "demo-ops"}
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))
    port = free_port()
    with (tmp / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'prometheus-data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        "prometheus did not start:\n" + (tmp / "prometheus.log").read_text()
                    ) from None
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    args = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{args}", timeout=30) as resp:
        result: list[dict[str, Any]] = json.loads(resp.read())["data"]["result"]
    return result


async def drive(base: str, seconds: float, admin: str) -> None:
    """The load an operator would see: exchanges, async exchanges, some errors, a live subscriber,
    and an operator rotating a key through the management API now and then."""
    import aiohttp

    sync = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtests.gen", "--url", base, "--users", "8", "--seconds", str(seconds),
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    asynchronous = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtests.gen", "--url", base, "--users", "2", "--seconds", str(seconds),
        "--async", stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    headers = {"Authorization": "Bearer demo-hanoi"}
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(base_url=base) as http:

        async def subscriber() -> None:
            sse = {**headers, "Accept": "text/event-stream"}
            async with http.get("/v1/events/bca/address_changed", headers=sse) as resp:
                async for _ in resp.content:
                    if time.monotonic() > deadline:
                        return

        async def errors() -> None:
            while time.monotonic() < deadline:
                async with http.post("/v1/exchange/bca/citizen", json={"cccd": "bad"}, headers=headers) as r:
                    await r.read()
                async with http.post("/v1/exchange/bca/household", json={"cccd": "001090012345"},
                                     headers={"Authorization": "Bearer demo-vcb"}) as r:  # fmt: skip
                    await r.read()
                await asyncio.sleep(0.5)

        async def operator() -> None:
            ops = {"Authorization": "Bearer demo-ops"}
            while time.monotonic() < deadline:
                async with http.post(f"{admin}/admin/v1/agencies/vcb/keys", json={}, headers=ops) as r:
                    issued = await r.json()
                async with http.delete(
                    f"{admin}/admin/v1/agencies/vcb/keys/{issued['key_id']}", headers=ops
                ) as r:
                    await r.read()
                await asyncio.sleep(5)

        await asyncio.gather(subscriber(), errors(), operator(), sync.wait(), asynchronous.wait())


def render(base: str, start: float, end: float, out: Path) -> dict[str, int]:
    """Every panel to a PNG, and all of them to dashboard.png; series found per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = json.loads(DASHBOARD.read_text())["panels"]
    step = max(1.0, (end - start) / 120)
    found: dict[str, int] = {}
    cols = 2
    rows = math.ceil(len(panels) / cols)
    overview, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows))
    for i, panel in enumerate(panels):
        single, ax_single = plt.subplots(figsize=(7, 3.2))
        n = 0
        for ax in (axes.flat[i], ax_single):
            n = 0
            for target in panel["targets"]:
                for series in query_range(base, target["expr"], start, end, step):
                    xs = [float(t) - start for t, _ in series["values"]]
                    ys = [float(v) for _, v in series["values"]]
                    label = target.get("legendFormat", "") or target["expr"]
                    for key, value in series["metric"].items():
                        label = label.replace("{{" + key + "}}", value)
                    ax.plot(xs, ys, label=label[:40])
                    n += 1
            ax.set_title(panel["title"], fontsize=10)
            ax.set_xlabel("seconds", fontsize=8)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            if 0 < n <= 8:
                ax.legend(fontsize=7, loc="upper left")
        found[panel["title"]] = n
        single.tight_layout()
        single.savefig(out / f"panel-{panel['id']:02d}.png", dpi=90)
        plt.close(single)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    overview.suptitle("NDXP overview — rendered from Prometheus (query_range of every panel's targets)")
    overview.tight_layout(rect=(0, 0, 1, 0.985))
    overview.savefig(out / "dashboard.png", dpi=80)
    plt.close(overview)
    return found


def main() -> int:
    sigterm_as_exit()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60, help="how long to drive load")
    parser.add_argument("--changes", type=float, default=20, help="events/s of the change feed")
    parser.add_argument("--out", type=Path, default=Path("dashboard-out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ndxp-dashboard-") as tmp_name:
        tmp = Path(tmp_name)
        with (
            kafka_bootstrap(tmp) as bootstrap,
            running_platform(tmp, bootstrap, 1, "--changes", f"{args.changes:g}") as (base, _),
        ):
            port = urllib.parse.urlsplit(base).port
            state = json.loads((tmp / "cache" / f"platform-{port}.json").read_text())
            targets = {"gateway": base.removeprefix("http://")}
            targets.update(
                {name: urllib.parse.urlsplit(url).netloc for name, url in state["metrics"].items()}
            )
            with prometheus(tmp, targets) as prom:
                print(
                    f"platform at {base}, Prometheus at {prom}; driving load for {args.seconds:g}s ...",
                    flush=True,
                )
                start = time.time()
                admin = state["metrics"]["admin"].removesuffix("/metrics")
                asyncio.run(drive(base, args.seconds, admin))
                time.sleep(3)  # the last scrapes
                found = render(prom, start, time.time(), args.out)
                # The operator's view from the same Prometheus: `ndxp status --prometheus`.
                status = subprocess.run(
                    [sys.executable, "-m", "broker.cli", "status", "--once", "--prometheus", prom,
                     "--url", base],
                    cwd=ROOT, env={**os.environ, "COLUMNS": "160"}, capture_output=True, text=True,
                    timeout=60, check=False,
                )  # fmt: skip
                (args.out / "status.txt").write_text(status.stdout)
    width = max(len(t) for t in found)
    for title, n in found.items():
        print(f"{title:{width}}  {n} series" + ("" if n else "  <- NO DATA"))
    print(f"panels in {args.out}/panel-*.png and {args.out}/dashboard.png")
    print(f"ndxp status --prometheus (exit {status.returncode}):\n{status.stdout}{status.stderr[-2000:]}")
    return 0 if all(found.values()) and status.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
