"""The limit sweep's short version: a client at 80% and 150% of its limit through 2 gateway instances
of 2 workers each (``loadtests/limits.py``, which runs ``ndxp up`` and a second instance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import run_loadtest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_a_client_gets_its_limit_through_two_instances_and_no_refusal_below_it(tmp_path: Path) -> None:
    out = tmp_path / "limits.json"
    code, report = run_loadtest(
        "limits.py", "--setups", "instances", "--connections", "8", "--seconds", "5", "--warmup", "2",
        "--limit", "40", "--json", str(out), timeout=300,
    )  # fmt: skip
    rows = {row["load"]: row for row in json.loads(out.read_text())} if out.exists() else {}
    assert set(rows) == {0.8, 1.5}, report
    assert rows[0.8]["refused"] == 0, report
    assert rows[1.5]["refused"] > 0, report  # offered 60/s: not twice the limit, as two instances would
    assert rows[1.5]["share"] == pytest.approx(1.0, abs=0.05), report
    assert code == 0, report
