"""`ndxp status`: a live terminal view of a running platform, for operators.

Every part up or down; exchanges/s in all and per service; p50/p99 latency;
errors by code; exchanges in flight; adapter, counter and keeper backlogs;
today's exact count. It reads each part's ``/metrics`` (the gateway's, and
those ``ndxp up`` wrote to its state file ``<cache>/platform-<port>.json``, or
``--part name=url``) and computes rates between two reads; or, with
``--prometheus URL``, asks a Prometheus server that scrapes them. It
refreshes in place; ``--once`` prints one frame (two reads a second apart).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

OK_OUTCOMES = frozenset({"ok", "business_error", "accepted", "replayed"})
"""Outcomes that are no error of the platform (a provider's own not-found is a correct answer)."""
Samples = dict[str, list[tuple[dict[str, str], float]]]


def state_path(cache_dir: Path, port: int) -> Path:
    """Where ``ndxp up`` on ``port`` writes the URLs of its parts' metrics."""
    return cache_dir / f"platform-{port}.json"


@dataclass
class Figures:
    """What one frame shows."""

    parts: dict[str, bool] = field(default_factory=dict)
    rate: float | None = None
    by_service: dict[str, float] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: dict[str, float] = field(default_factory=dict)
    in_flight: float | None = None
    backlog: dict[str, float] = field(default_factory=dict)
    today: int | None = None
    registry: dict[str, float] = field(default_factory=dict)
    """The live registry's version (offset applied) each part runs, by part."""
    log_size: float | None = None
    """Leaves in the exchange log."""
    checkpoint_age_s: float | None = None
    """Age of the log's newest signed checkpoint."""
    note: str = ""


def _get(url: str, timeout: float = 2.0, key: str | None = None) -> bytes | None:
    """``url``'s body, or None; ``key``: sent as the bearer credential (the gateway's /metrics and
    /v1/stats are an operator's)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:  # noqa: S310 - operator-given URLs
            data: bytes = resp.read()
            return data
    except (urllib.error.URLError, OSError, ValueError):
        return None


def scrape(url: str, key: str | None = None) -> Samples | None:
    """Every sample of a ``/metrics`` page by name, or None when the part does not answer."""
    raw = _get(url, key=key)
    if raw is None:
        return None
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(raw.decode()):
        for s in family.samples:
            samples[s.name].append((dict(s.labels), float(s.value)))
    return samples


def _sum(samples: Samples | None, name: str, by: str | None = None, **match: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for labels, value in (samples or {}).get(name, []):
        if all(labels.get(k) == v for k, v in match.items()):
            out[labels.get(by, "") if by else ""] += value
    return dict(out)


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """``q`` of a cumulative histogram (upper bound → count), interpolated within its bucket."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if upper == float("inf"):
                return lower
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (upper - lower) * share
        lower, below = upper, count
    return lower


def _buckets(samples: Samples | None) -> dict[float, float]:
    out: dict[float, float] = defaultdict(float)
    for labels, value in (samples or {}).get("ndxp_exchange_duration_seconds_bucket", []):
        out[float(labels["le"])] += value
    return dict(out)


def _exchanges(samples: Samples | None) -> dict[tuple[str, str, str], float]:
    """``ndxp_exchanges_total`` by (provider, service, outcome), summed over clients."""
    out: dict[tuple[str, str, str], float] = defaultdict(float)
    for labels, value in (samples or {}).get("ndxp_exchanges_total", []):
        out[(labels.get("provider", "-"), labels.get("service", "-"), labels.get("outcome", ""))] += value
    return out


def from_metrics(
    parts: dict[str, str], gateway: str, interval_s: float = 1.0, key: str | None = None
) -> Figures:
    """Two reads of every part's metrics ``interval_s`` apart: rates, latency, errors, backlogs.
    ``key`` (an operator's) goes to the gateway only; the other parts serve internal ports."""

    def read() -> dict[str, Samples | None]:
        return {name: scrape(url, key if name == "gateway" else None) for name, url in parts.items()}

    first = read()
    time.sleep(interval_s)
    second = read()
    f = Figures(parts={name: s is not None for name, s in second.items()})
    g0, g1 = first.get("gateway"), second.get("gateway")
    if g1 is not None:
        by_key, prior = _exchanges(g1), _exchanges(g0)
        rates: dict[str, float] = defaultdict(float)
        for (provider, service, outcome), value in by_key.items():
            delta = (value - prior.get((provider, service, outcome), 0.0)) / interval_s
            if provider != "-":
                rates[f"{provider}/{service}"] += delta
            if outcome not in OK_OUTCOMES and delta > 0:
                f.errors[outcome] = f.errors.get(outcome, 0.0) + delta
        f.rate = sum(rates.values())
        f.by_service = {k: v for k, v in rates.items() if v > 0}
        b0, b1 = _buckets(g0), _buckets(g1)
        window = {le: b1[le] - b0.get(le, 0.0) for le in b1}
        use = window if window and max(window.values()) > 0 else b1
        f.note = "latency over the last read" if use is window else "latency since start (no traffic now)"
        p50, p99 = quantile(use, 0.5), quantile(use, 0.99)
        f.p50_ms = None if p50 is None else p50 * 1000
        f.p99_ms = None if p99 is None else p99 * 1000
        f.in_flight = sum(_sum(g1, "ndxp_gateway_in_flight").values())
    for name, metric in (
        ("adapters", "ndxp_adapter_consumer_lag"),
        ("counter", "ndxp_counter_lag"),
        ("keeper", "ndxp_async_pending"),
        ("audit", "ndxp_audit_lag"),
    ):
        samples = second.get(name)
        if samples is not None and metric in samples:
            f.backlog[{"keeper": "async pending"}.get(name, f"{name} lag")] = sum(
                _sum(samples, metric).values()
            )
    audit = second.get("audit") or {}
    if "ndxp_audit_tree_size" in audit:
        f.log_size = sum(_sum(audit, "ndxp_audit_tree_size").values())
        signed = sum(_sum(audit, "ndxp_audit_checkpoint_timestamp_seconds").values())
        f.checkpoint_age_s = time.time() - signed if signed else None
    for samples in second.values():
        for labels, value in (samples or {}).get("ndxp_registry_version", []):
            part = labels.get("part", "?")
            f.registry[part] = min(value, f.registry.get(part, value))  # a gateway's slowest worker
    f.today = _today(gateway, key)
    return f


def _today(gateway: str, key: str | None) -> int | None:
    raw = _get(gateway.rstrip("/") + "/v1/stats", key=key)
    try:
        return int(json.loads(raw)["total"]) if raw else None
    except (ValueError, KeyError, TypeError):
        return None


def from_prometheus(prometheus: str, gateway: str, key: str | None = None) -> Figures:
    """The same figures from a Prometheus server that scrapes the parts."""

    def query(expr: str) -> list[tuple[dict[str, str], float]]:
        raw = _get(f"{prometheus.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if raw is None:
            return []
        result: list[dict[str, Any]] = json.loads(raw).get("data", {}).get("result", [])
        return [(r["metric"], float(r["value"][1])) for r in result]

    f = Figures(note="from Prometheus, over the last minute")
    f.parts = {r["job"].removeprefix("ndxp-"): v == 1 for r, v in query('up{job=~"ndxp-.*"}')}
    f.by_service = {
        f"{r['provider']}/{r['service']}": v
        for r, v in query("sum by (provider, service) (rate(ndxp_exchanges_total[1m]))")
        if r.get("provider", "-") != "-"
    }
    f.rate = sum(v for _, v in query("sum(rate(ndxp_exchanges_total[1m]))")) or 0.0
    for q, attr in ((0.5, "p50_ms"), (0.99, "p99_ms")):
        got = query(f"histogram_quantile({q}, sum by (le) (rate(ndxp_exchange_duration_seconds_bucket[1m])))")
        if got and got[0][1] == got[0][1]:  # not NaN
            setattr(f, attr, got[0][1] * 1000)
    ok = "|".join(sorted(OK_OUTCOMES))
    f.errors = {
        r["outcome"]: v
        for r, v in query(f'sum by (outcome) (rate(ndxp_exchanges_total{{outcome!~"{ok}"}}[1m]))')
        if v > 0
    }
    f.in_flight = sum(v for _, v in query("sum(ndxp_gateway_in_flight)"))
    for label, expr in (
        ("adapters lag", "sum(ndxp_adapter_consumer_lag)"),
        ("counter lag", "sum(ndxp_counter_lag)"),
        ("async pending", "sum(ndxp_async_pending)"),
        ("audit lag", "sum(ndxp_audit_lag)"),
    ):
        got = query(expr)
        if got:
            f.backlog[label] = got[0][1]
    f.registry = {r.get("part", "?"): v for r, v in query("min by (part) (ndxp_registry_version)")}
    size = query("max(ndxp_audit_tree_size)")
    f.log_size = size[0][1] if size else None
    age = query("time() - max(ndxp_audit_checkpoint_timestamp_seconds)")
    f.checkpoint_age_s = age[0][1] if age else None
    f.today = _today(gateway, key)
    return f


def render(f: Figures, source: str) -> Group:
    """One frame."""
    head = Table.grid(padding=(0, 3))
    for _ in range(5):
        head.add_column()
    head.add_row(
        Text(f"{f.rate:,.1f}/s" if f.rate is not None else "-", style="bold"),
        Text(f"p50 {f.p50_ms:.1f} ms" if f.p50_ms is not None else "p50 -"),
        Text(f"p99 {f.p99_ms:.1f} ms" if f.p99_ms is not None else "p99 -"),
        Text(f"in flight {f.in_flight:.0f}" if f.in_flight is not None else "in flight -"),
        Text(f"today {f.today:,}" if f.today is not None else "today -", style="bold"),
    )
    parts = Table(title="parts", title_justify="left", show_edge=False)
    parts.add_column("part")
    parts.add_column("state")
    parts.add_column("registry", justify="right")
    for name, up in f.parts.items():
        version = f.registry.get(name)
        parts.add_row(
            name,
            Text("up", style="green") if up else Text("DOWN", style="bold red"),
            "-" if version is None else f"{version:,.0f}",
        )
    services = Table(title="exchanges/s by service", title_justify="left", show_edge=False)
    services.add_column("service")
    services.add_column("/s", justify="right")
    for name, rate in sorted(f.by_service.items(), key=lambda kv: -kv[1])[:12]:
        services.add_row(name, f"{rate:,.1f}")
    errors = Table(title="errors/s by code", title_justify="left", show_edge=False)
    errors.add_column("code")
    errors.add_column("/s", justify="right")
    for code, rate in sorted(f.errors.items(), key=lambda kv: -kv[1]):
        errors.add_row(Text(code, style="red"), f"{rate:,.1f}")
    if not f.errors:
        errors.add_row(Text("none", style="green"), "")
    backlog = Table(title="backlogs", title_justify="left", show_edge=False)
    backlog.add_column("what")
    backlog.add_column("n", justify="right")
    for name, n in f.backlog.items():
        backlog.add_row(name, f"{n:,.0f}")
    if f.log_size is not None:
        backlog.add_row("log leaves", f"{f.log_size:,.0f}")
        age = f.checkpoint_age_s
        backlog.add_row(
            "checkpoint age",
            Text("-" if age is None else f"{age:,.1f} s", style="red" if age is None or age > 30 else ""),
        )
    grid = Table.grid(padding=(0, 4))
    grid.add_row(parts, services, errors, backlog)
    stamp = time.strftime("%H:%M:%S")
    return Group(Text(f"NDXP status {stamp}  ({source}; {f.note})", style="dim"), head, grid)


def run_status(
    gateway: str,
    parts: dict[str, str],
    *,
    prometheus: str | None = None,
    once: bool = False,
    interval_s: float = 2.0,
    console: Console | None = None,
    rounds: int | None = None,
    key: str | None = None,
) -> int:
    """Show the view; ``once``: one frame. Returns 1 when a part is down (for scripts), else 0."""
    console = console or Console()
    read: Callable[[], Figures] = (
        (lambda: from_prometheus(prometheus, gateway, key))
        if prometheus
        else (lambda: from_metrics(parts, gateway, interval_s=1.0 if once else interval_s, key=key))
    )
    source = prometheus or ", ".join(f"{n} {u}" for n, u in parts.items())
    if once:
        f = read()
        console.print(render(f, source))
        return 0 if all(f.parts.values()) else 1
    with Live(render(Figures(note="reading ..."), source), console=console, refresh_per_second=4) as live:
        n = 0
        while rounds is None or n < rounds:  # Ctrl-C ends it
            f = read()
            live.update(render(f, source))
            n += 1
            if prometheus:
                time.sleep(interval_s)
    return 0
