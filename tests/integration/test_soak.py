"""The soak's short version: paced load at a share of the measured capacity, memory sampled per part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import run_loadtest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_a_short_soak_holds_half_the_capacity_counts_exactly_and_samples_every_parts_memory(
    tmp_path: Path,
) -> None:
    out = tmp_path / "soak.json"
    code, report = run_loadtest(
        "soak.py", "--minutes", "0.3", "--interval", "5", "--probe", "4", "--users", "8",
        "--json", str(out), timeout=300,
    )  # fmt: skip
    assert code == 0, report
    result = json.loads(out.read_text())
    assert result["exact"], report
    assert result["answered"] == result["counted"] > 0, report
    assert result["rate"] == pytest.approx(result["capacity_rps"] / 2, rel=0.01)
    assert len(result["samples"]) >= 3, report
    # Paced: no interval runs above the rate held (a little over: the first sends of each interval).
    assert max(s["rps"] for s in result["samples"]) <= result["rate"] * 1.15 + 5, report
    for part in ("kafka", "gateway", "adapters", "counter", "keeper"):
        assert all(s["rss_mb"][part] > 0 for s in result["samples"]), (part, report)
        assert part in result["growth"], report
    assert "MB/hour" in report
