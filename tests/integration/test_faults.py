"""The fault suite's short version: parts SIGKILLed under load lose no answered exchange."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_sigkilled_parts_are_restarted_and_nothing_answered_goes_uncounted(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "faults.py"), "--nodes", "1",
         "--faults", "gateway-worker,adapters,counter", "--before", "2", "--after", "10",
         "--users", "8", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=420, check=False,
    )  # fmt: skip
    report = run.stdout + run.stderr[-3000:]
    assert run.returncode == 0, report
    results = {r["fault"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"gateway-worker", "adapters", "counter"}, report
    for name, r in results.items():
        assert r["answered"] > 0, (name, report)
        assert r["not_counted"] == 0, (name, report)
        assert r["counted_twice"] == 0, (name, report)
        # Service came back after the fault (the supervisor restarted what died).
        assert r["recovery_s"] is not None, (name, report)
