"""Every PromQL expression in deploy/ names only metrics that the platform exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from broker.metrics import (
    AdapterMetrics,
    AuditMetrics,
    CounterMetrics,
    GatewayMetrics,
    KeeperMetrics,
    RegistryMetrics,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "le", "inf", "nan",
}  # fmt: skip


def exposed_names() -> set[str]:
    """Series names the platform's metric definitions produce, plus Prometheus' own `up`."""
    registry = CollectorRegistry()
    for metrics in (GatewayMetrics, AdapterMetrics, CounterMetrics, KeeperMetrics, AuditMetrics):
        metrics(registry)
    RegistryMetrics(registry, "gateway")
    names = {"up"}
    for family in registry.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions or keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = m.group(0)
        following = expr[m.end() :].lstrip()[:1]
        if following == "(" or word.lower() in PROMQL_WORDS:
            continue
        if re.fullmatch(r"[0-9.e+-]+", word) or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def dashboard_exprs() -> list[str]:
    exprs: list[str] = []
    for path in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            exprs.extend(t["expr"] for t in panel["targets"])
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_the_name_parser_finds_names_and_skips_functions() -> None:
    expr = 'histogram_quantile(0.99, sum by (le) (rate(a_b_bucket{x="y(z)"}[5m]))) / c_total > 1'
    assert metric_names(expr) == {"a_b_bucket", "c_total"}


@pytest.mark.parametrize("expr", dashboard_exprs() + alert_exprs())
def test_every_expression_names_only_exposed_metrics(expr: str) -> None:
    names = metric_names(expr)
    assert names, expr
    assert names <= exposed_names(), names - exposed_names()


def test_dashboard_covers_what_operators_need() -> None:
    text = " ".join(dashboard_exprs())
    for needed in ("86400", "histogram_quantile(0.99", "ndxp_gateway_in_flight", "lag", "outcome"):
        assert needed in text


def test_promtool_accepts_the_config_and_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("Debian's prometheus (promtool) is needed: apt-get install prometheus")
    config = DEPLOY / "prometheus" / "prometheus.yml"
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_is_registered_where_asked_with_a_prometheus_name_labels_and_help() -> None:
    """What the dashboards and alerts rely on: each metric lands in the registry it was given
    (the parts' /metrics serve that one), is named ``ndxp_<snake_case>``, has snake_case labels
    and a help text."""
    from prometheus_client.metrics import MetricWrapperBase

    for cls in (GatewayMetrics, AdapterMetrics, CounterMetrics, KeeperMetrics, AuditMetrics):
        registry = CollectorRegistry()
        metrics = cls(registry)
        defined = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
        assert defined, cls
        registered = {family.name for family in registry.collect()}
        for m in defined:
            name = m._name
            assert re.fullmatch(r"ndxp_[a-z0-9_]+", name), (cls.__name__, name)
            assert name.removesuffix("_total") in registered, f"{name} is not in the registry it was given"
            for label in m._labelnames:
                assert re.fullmatch(r"[a-z][a-z0-9_]*", label), (name, label)
            assert isinstance(m._documentation, str), name
            assert len(m._documentation) > 10, name
