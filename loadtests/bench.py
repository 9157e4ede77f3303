"""Benchmark: the exchange path against the raw-Kafka request/reply ceiling, in one run.

Starts a local Apache Kafka (or uses NDXP_KAFKA_BOOTSTRAP) and `ndxp up` on
it, then for each concurrency in ``--users``:

1. the **raw-Kafka ceiling**: the same number of concurrent callers doing
   aiokafka request/reply with a trivial echo over the same Kafka, no HTTP
   (``rawkafka.py``);
2. a warm-up of the exchange path (not measured);
3. the **exchange path**: the demo mix (``mix.py``) through the gateway from
   the light generator (``gen.py``), for ``--seconds``;
4. with ``--async``, the same mix as **async exchanges**: submit with
   ``Prefer: respond-async``, then long-poll ``GET /v1/exchanges/{id}``
   until finished (the keeper finishes and counts them).

It prints, per concurrency: exchanges/s, p50/p99, failures, the ratio to the
raw ceiling, CPU milliseconds per exchange of every part (Kafka JVM, gateway
workers, adapters, counter, land backend, load generator; read from /proc
over the measured window), and exactness: the ``/v1/stats`` total before and
after equals the responses the generator received. ``--out DIR`` keeps the
figures as JSON and a PNG of throughput and p50/p99 against concurrency.
Everything stays on 127.0.0.1; every run is bounded in time.

    .venv/bin/python loadtests/bench.py --users 16,32,64,128 --seconds 60 --out bench-out
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import psutil

from broker.dev.platform import load_test_registry
from broker.dev.ports import free_port
from broker.lifecycle import sigterm_as_exit
from loadtests.running import cmdline, descendants, ndxp_up

ROOT = Path(__file__).resolve().parents[1]

AUDIT = {"port": free_port()}
"""The exchange log's API port of the platform under test (its /metrics: coverage delays)."""

PARTS = ("kafka", "gateway", "adapters", "counter", "keeper", "audit", "backend", "generator")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


def platform_parts(up: int) -> dict[str, list[int]]:
    """The platform's processes by part (Kafka: the JVMs under this benchmark)."""
    parts: dict[str, list[int]] = {p: [] for p in PARTS}
    gateway_roots: list[int] = []
    for pid in descendants(os.getpid()):
        cmd = cmdline(pid)
        if "kafka.Kafka" in cmd:
            parts["kafka"].append(pid)
    for pid in descendants(os.getpid()):
        if "loadtests.catalog serve" in cmdline(pid):  # the synthetic catalog's adapters (--catalog)
            parts["adapters"].append(pid)
    for pid in descendants(up):
        cmd = cmdline(pid)
        for part, marker in (
            ("gateway", "broker.cli gateway"),
            ("adapters", "broker.cli adapter"),
            ("counter", "broker.cli counter"),
            ("keeper", "broker.cli keeper"),
            ("audit", "broker.cli audit"),
            ("backend", "broker.cli backend"),
        ):
            if marker in cmd:
                parts[part].append(pid)
                if part == "gateway":
                    gateway_roots.append(pid)
    for root in gateway_roots:
        parts["gateway"] += [c for c in descendants(root) if "resource_tracker" not in cmdline(c)]
    return parts


def _snapshot(parts: dict[str, list[int]]) -> dict[str, float]:
    return {part: sum(_cpu_s(p) for p in pids) for part, pids in parts.items()}


def _run_measured(cmd: list[str], timeout: float) -> tuple[dict[str, Any], float]:
    """Run a child that prints one JSON line; return it and the child's CPU seconds (read from /proc)."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    cpu = 0.0
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        cpu = max(cpu, _cpu_s(proc.pid))
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.05)
    assert proc.stdout is not None
    lines = [line for line in proc.stdout.read().decode().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd[:3])} printed no result (exit {proc.returncode})")
    return json.loads(lines[-1]), cpu


def _operator(url: str) -> urllib.request.Request:
    """With the demo operator's key: /v1/stats shows an operator every agency's rows."""
    return urllib.request.Request(url, headers={"Authorization": "Bearer demo-ops"})


def stats_total(base: str) -> int:
    """Today's /v1/stats total, or -1 if the gateway does not answer (a fault in progress)."""
    stats = stats_today(base)
    return -1 if stats is None else int(stats["total"])


def stats_today(base: str) -> dict[str, Any] | None:
    """Today's /v1/stats as an operator sees them, or None if the gateway does not answer."""
    try:
        with urllib.request.urlopen(_operator(f"{base}/v1/stats"), timeout=10) as resp:
            return cast(dict[str, Any], json.loads(resp.read()))
    except OSError:
        return None


def settled_total(base: str, within_s: float = 60, quiet_s: float = 2.0) -> int:
    """The /v1/stats total once the counter has caught up (unchanged for ``quiet_s``)."""
    deadline = time.monotonic() + within_s
    last, since = stats_total(base), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = stats_total(base)
        if now != last or now < 0:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    return last


@contextmanager
def kafka_bootstrap(tmp: Path) -> Iterator[str]:
    given = os.environ.get("NDXP_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    from broker.dev.localkafka import LocalKafka
    from broker.settings import Settings

    kafka = LocalKafka(
        Settings.from_env(), nodes=1, data_dir=tmp / "kafka", progress=lambda m: print(m, flush=True)
    )
    try:
        yield kafka.start()
    finally:
        kafka.stop()


@contextmanager
def running_platform(
    tmp: Path, bootstrap: str, workers: int, *up_args: str, limits: Mapping[str, float] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    # The demo registry's per-client rate limits would answer 429 long before
    # the platform's own limits show: measure with them raised 1000-fold (``limits``: but these).
    load_test_registry(ROOT / "deploy" / "registry.yaml", tmp / "registry.yaml", limits=limits)
    port = free_port()
    env = {
        **os.environ,
        "NDXP_KAFKA_BOOTSTRAP": bootstrap,
        "NDXP_WORKERS": str(workers),
        "NDXP_LOG_LEVEL": "WARNING",
        "NDXP_REGISTRY": str(tmp / "registry.yaml"),
        "NDXP_CACHE_DIR": str(tmp / "cache"),  # its own state file (ndxp status), beside no other
        "NDXP_ADMIN_PORT": str(free_port()),
        "NDXP_AUDIT_PORT": str(AUDIT["port"]),
    }
    with ndxp_up(["--port", str(port), *up_args], env, tmp / "up.log") as up:
        yield f"http://127.0.0.1:{port}", up


def raw_ceiling(bootstrap: str, users: int, args: argparse.Namespace) -> dict[str, Any]:
    """aiokafka request/reply with a trivial echo, ``users`` callers, over the same Kafka."""
    py = sys.executable
    topic = f"bench.raw.{os.getpid()}.{users}.{time.monotonic_ns()}"
    print(f"[{users} users] raw-Kafka ceiling for {args.seconds}s ...", flush=True)
    echo = subprocess.Popen(
        [py, str(ROOT / "loadtests" / "rawkafka.py"), "echo", "--bootstrap", bootstrap, "--topic", topic],
        cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        raw, _ = _run_measured(
            [py, str(ROOT / "loadtests" / "rawkafka.py"), "callers", "--bootstrap", bootstrap,
             "--topic", topic, "--users", str(users), "--seconds", str(args.seconds)],
            timeout=args.seconds + 60,
        )  # fmt: skip
    finally:
        echo.terminate()
        echo.wait(30)
    return raw


def measure(
    base: str, up: subprocess.Popen[bytes], bootstrap: str, users: int, args: argparse.Namespace
) -> dict[str, Any]:
    py = sys.executable
    raw = raw_ceiling(bootstrap, users, args)
    gen = [py, "-m", "loadtests.gen", "--url", base, "--users", str(users)]
    if args.warmup:
        print(f"[{users} users] exchange warm-up for {args.warmup}s ...", flush=True)
        _run_measured([*gen, "--seconds", str(args.warmup), "--seed", "1"], timeout=args.warmup + 60)
    m = _measured(
        base, up, f"[{users} users] exchanges", [*gen, "--seconds", str(args.seconds)], args.seconds + 60
    )
    _read_coverage()  # before the log is paused (the catch-up after a pause is not the log's delay)
    log_cost = _log_toggled(base, up, users, gen, args) if args.log_cost else None
    alone = {}
    for service in args.compare:
        one = [*gen, "--only", service]
        _run_measured([*one, "--seconds", "3", "--seed", "1"], timeout=63)  # its connections warm
        alone[service] = _measured(
            base, up, f"[{users} users] {service} alone", [*one, "--seconds", str(args.seconds)],
            args.seconds + 60,
        )  # fmt: skip
        alone[service]["ratio"] = alone[service]["exchange"]["rps"] / raw["rps"] if raw["rps"] else 0.0
    return {
        "users": users,
        "raw": raw,
        "ratio": m["exchange"]["rps"] / raw["rps"] if raw["rps"] else 0.0,
        **m,
        **({"alone": alone} if alone else {}),
        **({"log_cost": log_cost} if log_cost else {}),
    }


def _demo_even(base: str, out: Path) -> Path:
    """The demo catalog evenly (every service's first example, the write included), by the bench client."""
    from loadtests.catalog import BENCH_KEY

    with urllib.request.urlopen(_operator(f"{base}/v1/services"), timeout=10) as resp:
        services = json.loads(resp.read())["services"]
    even = [(BENCH_KEY, f"{s['provider']}/{s['service']}", s["examples"][0]) for s in services]
    out.write_text(json.dumps(even))
    return out


def _wait_answered(base: str, key: str, service: str, body: Any, within_s: float = 120) -> None:
    """Until ``service`` answers 200 (the registry reached the gateway, its adapter serves)."""
    deadline = time.monotonic() + within_s
    while True:
        req = urllib.request.Request(
            f"{base}/v1/exchange/{service}", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service} not answering within {within_s:g}s")
        time.sleep(0.5)


@contextmanager
def _catalog_adapters(env: Mapping[str, str], services: int, per: int, log_path: Path) -> Iterator[None]:
    """The synthetic catalog's adapters (``loadtests.catalog serve``) until the block ends."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadtests.catalog", "serve", "--services", str(services),
             "--per-provider", str(per)],
            cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while b"adapters serving" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the catalog's adapters did not start:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def catalog_sweep(
    base: str, up: subprocess.Popen[bytes], bootstrap: str, tmp: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The demo catalog evenly, then synthetic catalogs of each size in ``args.catalog`` (added to the
    live registry with ``ndxp registry import``, served by ``loadtests.catalog``), evenly: raw ceiling,
    exchanges, CPU per exchange per part, exactness."""
    from loadtests import catalog

    users = int(args.users.split(",")[0])
    env = {**os.environ, "NDXP_KAFKA_BOOTSTRAP": bootstrap, "NDXP_LOG_LEVEL": "WARNING",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    gen = [sys.executable, "-m", "loadtests.gen", "--url", base, "--users", str(users)]
    out: list[dict[str, Any]] = []
    for size, per in [(0, catalog.PER_PROVIDER), *args.catalog]:
        folder = tmp / f"catalog-{size}-{per}"
        registry = catalog.write(folder, size, per, tmp / "registry.yaml")
        subprocess.run(
            [sys.executable, "-m", "broker.cli", "registry", "import", "--schemas", str(folder / "schemas"),
             str(registry)], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        what = "the demo catalog evenly" if size == 0 else f"{size:,} synthetic services evenly"
        with contextlib.ExitStack() as stack:
            if size == 0:
                even = _demo_even(base, folder / "even.json")
            else:
                print(f"[catalog {size:,}] starting its adapters ...", flush=True)
                stack.enter_context(_catalog_adapters(env, size, per, folder / "adapters.log"))
                even = folder / "even.json"
                even.write_text(json.dumps(catalog.mix(size, per)))
            first = json.loads(even.read_text())
            for key, service, body in first:  # every one: the registry and its adapter reached
                _wait_answered(base, key, service, body)
            raw = raw_ceiling(bootstrap, users, args)
            one = [*gen, "--even", str(even)]
            if args.warmup:
                _run_measured([*one, "--seconds", str(args.warmup), "--seed", "1"], timeout=args.warmup + 60)
            m = _measured(base, up, f"[{what}]", [*one, "--seconds", str(args.seconds)], args.seconds + 60)
            # ``--compare``: each of those demo services alone, beside the same raw ceiling.
            alone = [
                (s, _measured(base, up, f"[{s} alone]", [*one, "--only", s, "--seconds", str(args.seconds)],
                              args.seconds + 60))
                for s in (args.compare if size == 0 else [])
            ]  # fmt: skip
        m.update(services=size or len(first), providers=len(catalog.layout(size, per)) if size else 0,
                 synthetic=size > 0, users=users, raw=raw,
                 ratio=m["exchange"]["rps"] / raw["rps"] if raw["rps"] else 0.0)  # fmt: skip
        out.append(m)
        for service, a in alone:
            a.update(services=1, providers=1, synthetic=False, users=users, raw=raw, only=service,
                     ratio=a["exchange"]["rps"] / raw["rps"] if raw["rps"] else 0.0)  # fmt: skip
            out.append(a)
    return out


def report_catalog(results: list[dict[str, Any]]) -> None:
    head = f"\n{'catalog':>22} {'raw/s':>7} | {'exch/s':>7} {'p50':>6} {'p99':>6} {'fail':>5} {'share':>6}"
    print(head + " | CPU ms/exchange: " + " ".join(f"{p:>8}" for p in PARTS) + f" {'total':>8} | exact")
    for r in results:
        ex, c = r["exchange"], r["cpu_ms_per_exchange"]
        name = (f"{r['services']:,} on {r['providers']} providers" if r["synthetic"]
                else r.get("only") or f"demo ({r['services']}) evenly")  # fmt: skip
        print(
            f"{name:>22} {r['raw']['rps']:7.0f} | {ex['rps']:7.0f} {ex['p50']:6.1f} {ex['p99']:6.1f}"
            f" {ex['failures'] + ex['errors']:5d} {r['ratio']:6.1%} | {'':16}"
            + " ".join(f"{c[p]:8.3f}" for p in PARTS)
            + f" {sum(c.values()):8.3f} |"
            f" {r['counted']} {'==' if r['exact'] else '!='} {r['responses']}"
        )


def plot_catalog(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synthetic = [r for r in results if r["synthetic"]]
    sizes = list(range(len(synthetic)))
    labels = [f"{r['services']:,}\n({r['providers']} prov.)" for r in synthetic]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(sizes, [100 * r["ratio"] for r in synthetic], "o-", label="synthetic catalog, evenly")
    for r in results:
        if not r["synthetic"]:
            left.axhline(
                100 * r["ratio"], ls=":", color="grey", label=f"demo catalog ({r['services']}) evenly"
            )
    left.set(xlabel="services in the catalog", ylabel="% of raw Kafka request/reply",
             title="Throughput, share of the raw ceiling", xticks=sizes, ylim=(0, None))  # fmt: skip
    left.set_xticklabels(labels)
    left.legend()
    left.grid(alpha=0.3)
    bottom = [0.0] * len(synthetic)
    for part in PARTS:
        values = [r["cpu_ms_per_exchange"][part] for r in synthetic]
        if max(values, default=0) > 0.005:
            right.bar(labels, values, bottom=bottom, label=part)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    right.set(
        xlabel="services in the catalog", ylabel="CPU ms per exchange", title="CPU per exchange, by part"
    )
    right.legend(fontsize=8)
    right.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


COVERAGE: dict[str, tuple[float, float, int]] = {}


def _audit_metrics() -> dict[str, list[tuple[dict[str, str], float]]] | None:
    """The audit part's /metrics samples by name, or None if it does not answer."""
    from broker.ops.status import scrape

    return scrape(f"http://127.0.0.1:{AUDIT['port']}/metrics")


def _read_coverage() -> None:
    """The audit part's ``ndxp_audit_coverage_seconds`` p50 and p99 so far (kept for the report)."""
    from broker.ops.status import quantile

    samples = _audit_metrics()
    if samples is None:
        return
    buckets = {float(labels["le"]): v for labels, v in samples.get("ndxp_audit_coverage_seconds_bucket", [])}
    p50, p99 = quantile(buckets, 0.5), quantile(buckets, 0.99)
    if p50 is not None and p99 is not None:
        COVERAGE["run"] = (p50, p99, int(max(buckets.values())))


def _coverage() -> tuple[float, float, int] | None:
    return COVERAGE.get("run")


def _await_log_caught_up(limit_s: float = 120.0) -> None:
    """Wait (bounded) until the audit part has every transaction record in the log (its lag is 0)."""
    deadline = time.monotonic() + limit_s
    lag = None
    while time.monotonic() < deadline:
        samples = _audit_metrics()
        lag = next((v for _, v in (samples or {}).get("ndxp_audit_lag", [])), None)
        if lag == 0:
            return
        time.sleep(1)
    print(f"  the exchange log had not caught up after {limit_s:.0f}s (lag {lag})", flush=True)


def _log_toggled(
    base: str, up: subprocess.Popen[bytes], users: int, gen: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """What the exchange log costs the sync path: one run of the generator while the log's part is
    paused (SIGSTOP) and resumed every ``--log-window`` seconds, ``--log-cost`` times each.

    Short windows in turn within one run: this shared machine's speed drifts over tens of seconds by
    more than the log costs, and a drift falls on both kinds of window alike. The log keeps up over the
    whole run (in each window with it, it also appends what came during the pause before), so the run's
    average is the throughput with the log and the paused windows' is the throughput without it:
    cost = 1 - average / paused. The gateway's share (hashing the bodies, keying the subject) is in both.
    Throughput is the counted exchanges (``/v1/stats``) per window."""
    pids = platform_parts(up.pid)["audit"]
    if not pids:
        raise RuntimeError("--log-cost: no audit part is running")
    window, n = args.log_window, 2 * args.log_cost
    ramp = 2.0
    print(f"[{users} users] exchanges, the log paused every other {window:.0f}s window ({n} windows) ...",
          flush=True)  # fmt: skip
    proc = subprocess.Popen(
        [*gen, "--seconds", str(int(ramp + n * window + 2))], cwd=ROOT, stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    windows: list[dict[str, Any]] = []
    try:
        time.sleep(ramp)
        parts = platform_parts(up.pid)
        for i in range(n):
            paused = i % 2 == 1
            for pid in pids:
                os.kill(pid, signal.SIGSTOP if paused else signal.SIGCONT)
            total0, cpu0, t0 = stats_total(base), _snapshot(parts), time.monotonic()
            time.sleep(window)
            total1, cpu1, t1 = stats_total(base), _snapshot(parts), time.monotonic()
            done = total1 - total0
            windows.append({"paused": paused, "rps": done / (t1 - t0), "exchanges": done,
                            "cpu_s": {p: cpu1[p] - cpu0[p] for p in PARTS}})  # fmt: skip
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        proc.wait(window + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"--log-cost: the generator failed (exit {proc.returncode})")
    _await_log_caught_up()
    with_log = [w["rps"] for w in windows if not w["paused"]]
    without = [w["rps"] for w in windows if w["paused"]]
    average, paused_rps = sum(with_log + without) / n, sum(without) / len(without)
    exchanges = max(1, sum(w["exchanges"] for w in windows))
    cpu_ms = {p: 1000 * sum(w["cpu_s"][p] for w in windows) / exchanges for p in PARTS}
    return {
        "windows": windows,
        "average_rps": average,
        "paused_rps": paused_rps,
        "cost": 1 - average / paused_rps if paused_rps else 0.0,
        "cpu_ms_per_exchange": cpu_ms,  # over the whole run, in which the log's part did all its work
    }


def _measured(
    base: str, up: subprocess.Popen[bytes], what: str, gen: list[str], timeout: int
) -> dict[str, Any]:
    """Run the generator once: its figures, CPU per part over the window, and exactness."""
    before = settled_total(base)
    parts = platform_parts(up.pid)
    cpu0, steal0, t0 = _snapshot(parts), _steal_s(), time.monotonic()
    print(f"{what} for {gen[-1]}s ...", flush=True)
    ex, gen_cpu = _run_measured(gen, timeout=timeout)
    cpu1, steal1, t1 = _snapshot(parts), _steal_s(), time.monotonic()
    after = settled_total(base)
    responses = sum(ex["statuses"].values())
    cpu = {part: cpu1[part] - cpu0[part] for part in PARTS}
    cpu["generator"] = gen_cpu
    return {
        "exchange": ex,
        "cpu_ms_per_exchange": {p: 1000 * s / max(1, responses) for p, s in cpu.items()},
        "cpu_s": cpu,
        "counted": after - before,
        "responses": responses,
        "exact": after - before == responses,
        "steal_cores": (steal1 - steal0) / max(1e-9, t1 - t0),
    }


def _steal_s() -> float:
    """CPU seconds the hypervisor has taken from this machine since boot (``steal`` in /proc/stat): on a
    shared VM, a window with more of it serves fewer exchanges for reasons of no part's own."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def measure_async(
    base: str, up: subprocess.Popen[bytes], users: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Async exchanges from the light generator: submit, then long-poll until finished."""
    gen = [sys.executable, "-m", "loadtests.gen", "--url", base, "--users", str(users), "--async"]
    m = _measured(base, up, f"[{users} users] async exchanges", [*gen, "--seconds", str(args.seconds)],
                  args.seconds + 120)  # fmt: skip
    return {"users": users, "mode": "async", "ratio_to_sync": 0.0, **m}


def report(results: list[dict[str, Any]]) -> None:
    print(
        f"\n{'users':>5} {'raw/s':>8} {'raw p50':>7} {'raw p99':>7} | {'exch/s':>7} {'p50':>6} {'p99':>6}"
        f" {'fail':>5} {'ratio':>6} | counted = answered"
    )
    for r in results:
        raw, ex = r["raw"], r["exchange"]
        print(
            f"{r['users']:5d} {raw['rps']:8.0f} {raw['p50']:7.1f} {raw['p99']:7.1f} | {ex['rps']:7.0f}"
            f" {ex['p50']:6.1f} {ex['p99']:6.1f} {ex['failures'] + ex['errors']:5d} {r['ratio']:6.1%} |"
            f" {r['counted']} {'==' if r['exact'] else '!='} {r['responses']}"
        )
    print("\nCPU ms per exchange (measured window, from /proc):")
    print(f"{'users':>5} " + " ".join(f"{p:>9}" for p in PARTS) + f" {'total':>9}")
    for r in results:
        c = r["cpu_ms_per_exchange"]
        print(f"{r['users']:5d} " + " ".join(f"{c[p]:9.3f}" for p in PARTS) + f" {sum(c.values()):9.3f}")
    best = max(results, key=lambda r: r["exchange"]["rps"])
    print(
        f"\nbest: {best['exchange']['rps']:.0f} exchanges/s at {best['users']} users"
        f" = {best['exchange']['rps'] * 86400 / 1e6:.0f} million a day, {best['ratio']:.0%} of raw Kafka"
    )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [r["users"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(
        users, [r["exchange"]["rps"] for r in results], "o-", label="exchanges (HTTP → Kafka → adapter)"
    )
    left.plot(users, [r["raw"]["rps"] for r in results], "s--", label="raw Kafka request/reply (echo)")
    left.set(xlabel="concurrent callers", ylabel="per second", title="Throughput", xscale="log", xticks=users)
    left.set_xticklabels([str(u) for u in users])
    left.minorticks_off()
    left.legend()
    left.grid(alpha=0.3)
    for key, style in (("p50", "o-"), ("p99", "s-")):
        right.plot(users, [r["exchange"][key] for r in results], style, label=f"exchange {key}")
        right.plot(users, [r["raw"][key] for r in results], style.replace("-", ":"), label=f"raw {key}")
    right.set(xlabel="concurrent callers", ylabel="ms", title="Latency", xscale="log", xticks=users)
    right.set_xticklabels([str(u) for u in users])
    right.minorticks_off()
    right.legend()
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _catalog_size(text: str) -> tuple[int, int]:
    """``N`` or ``N/M``: N services, M per provider (default 10)."""
    services, _, per = text.partition("/")
    return int(services), int(per or 10)


def catalog_main(swept: list[dict[str, Any]], out: Path | None) -> int:
    report_catalog(swept)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "catalog.json").write_text(json.dumps(swept, indent=2))
        plot_catalog(swept, out / "catalog.png")
        print(f"figures in {out / 'catalog.json'} and {out / 'catalog.png'}")
    return 0 if all(r["exact"] for r in swept) else 1


def main() -> int:
    sigterm_as_exit()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", default="64", help="comma-separated concurrencies, e.g. 16,32,64,128")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=15, help="seconds of exchanges first, not measured")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--out", type=Path, help="directory for bench.json and bench.png")
    parser.add_argument(
        "--async", dest="respond_async", action="store_true", help="also measure async exchanges"
    )
    parser.add_argument(
        "--compare", default="", metavar="P/S,…",
        help="also each of these services alone (e.g. a bound one and an in-process handler's)",
    )  # fmt: skip
    parser.add_argument(
        "--log-cost", nargs="?", const=6, default=0, type=int, metavar="PAIRS",
        help="also measure the exchange log's cost to the sync path: one run in which the log's part is "
        "paused every other --log-window seconds, PAIRS (default 6) times",
    )  # fmt: skip
    parser.add_argument(
        "--log-window", type=float, default=5.0, metavar="S", help="seconds per --log-cost window (5)"
    )
    parser.add_argument(
        "--catalog", default="", metavar="N,…",
        help="instead of the sweep over --users: the demo catalog evenly, then synthetic catalogs of N "
        "services (N/M: M per provider, default 10) evenly, at the first --users (e.g. 13,200,1000,1000/100)",
    )  # fmt: skip
    args = parser.parse_args()
    args.compare = [s for s in args.compare.split(",") if s]
    args.catalog = [_catalog_size(n) for n in args.catalog.split(",") if n]
    sweep = [int(u) for u in args.users.split(",")]
    with (
        tempfile.TemporaryDirectory(prefix="ndxp-bench-") as tmp,
        kafka_bootstrap(Path(tmp)) as bootstrap,
        running_platform(Path(tmp), bootstrap, args.workers) as (base, up),
    ):
        print(f"platform up at {base} ({args.workers} gateway worker(s)) on Kafka {bootstrap}", flush=True)
        if args.catalog:
            return catalog_main(catalog_sweep(base, up, bootstrap, Path(tmp), args), args.out)
        results = [measure(base, up, bootstrap, users, args) for users in sweep]
        async_results = (
            [measure_async(base, up, users, args) for users in sweep] if args.respond_async else []
        )
    report(results)
    for r in results:
        for service, a in r.get("alone", {}).items():
            ex = a["exchange"]
            print(
                f"{service} alone, {r['users']} users: {ex['rps']:.0f} exchanges/s p50 {ex['p50']:.1f} ms"
                f" p99 {ex['p99']:.1f} ms, failed {ex['failures'] + ex['errors']}, {a['ratio']:.1%} of raw;"
                f" counted {a['counted']} {'==' if a['exact'] else '!='} {a['responses']} answered"
            )
    for r in results:
        if "log_cost" in r:
            c = r["log_cost"]
            total = sum(v for p, v in c["cpu_ms_per_exchange"].items() if p != "generator")
            rates = " ".join(f"{w['rps']:.0f}{'p' if w['paused'] else ''}" for w in c["windows"])
            print(f"  log cost windows (exchanges/s; p: the log paused): {rates}")
            print(
                f"log cost, {r['users']} users: {c['average_rps']:.0f}/s over the run with the log,"
                f" {c['paused_rps']:.0f}/s in its paused windows: {c['cost']:+.1%}; the log part's CPU"
                f" {c['cpu_ms_per_exchange']['audit']:.3f} ms/exchange of the parts' {total:.3f}"
            )
    coverage = _coverage()
    if coverage is not None:
        print(f"exchange log: a checkpoint covered each exchange within p50 {coverage[0]:.2f} s, "
              f"p99 {coverage[1]:.2f} s of its end ({coverage[2]:,} leaves, the whole run)")  # fmt: skip
    for r in async_results:
        ex = r["exchange"]
        sync_rps = next(s["exchange"]["rps"] for s in results if s["users"] == r["users"])
        r["ratio_to_sync"] = ex["rps"] / sync_rps if sync_rps else 0.0
        print(
            f"async, {r['users']} users: {ex['rps']:.0f} exchanges/s finished (submit → result)"
            f" p50 {ex['p50']:.1f} ms p99 {ex['p99']:.1f} ms, failed {ex['failures'] + ex['errors']},"
            f" {r['ratio_to_sync']:.0%} of sync; counted {r['counted']}"
            f" {'==' if r['exact'] else '!='} {r['responses']} answered"
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.json").write_text(json.dumps(results + async_results, indent=2))
        plot(results, args.out / "bench.png")
        print(f"figures in {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    alone = [a for r in results for a in r.get("alone", {}).values()]
    return 0 if all(r["exact"] for r in results + async_results + alone) else 1


if __name__ == "__main__":
    sys.exit(main())
