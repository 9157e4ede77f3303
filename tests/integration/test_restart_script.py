"""The restart measurement's short version: one SIGKILL of the adapters, taken over by their warm spare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import run_loadtest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_a_killed_adapters_process_is_taken_over_by_its_warm_spare_and_serves_again(tmp_path: Path) -> None:
    out = tmp_path / "restart.json"
    code, report = run_loadtest("restart.py", "--kills", "1", "--json", str(out), timeout=300)
    assert code == 0, report
    (kill,) = json.loads(out.read_text())["kills"]
    assert kill["by"] == "warm spare", report
    assert kill["ready_s"] is not None, report
    assert kill["first_ok_s"] is not None, report
