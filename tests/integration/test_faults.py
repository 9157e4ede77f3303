"""The fault suite's short version: parts SIGKILLed under load lose no answered exchange."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import run_loadtest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_sigkilled_parts_are_restarted_and_nothing_answered_goes_uncounted(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    code, report = run_loadtest(
        "faults.py", "--nodes", "1", "--faults", "gateway-worker,adapters,counter", "--before", "2",
        "--after", "10", "--users", "8", "--json", str(out), timeout=420,
    )  # fmt: skip
    assert code == 0, report
    results = {r["fault"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"gateway-worker", "adapters", "counter"}, report
    for name, r in results.items():
        assert r["answered"] > 0, (name, report)
        assert r["not_counted"] == 0, (name, report)
        assert r["counted_twice"] == 0, (name, report)
        # Service came back after the fault (the supervisor restarted what died).
        assert r["recovery_s"] is not None, (name, report)
