"""Every load and fault script starts the way the README runs it (as a file or with -m)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "loadtests").glob("*.py") if p.name not in ("__init__.py",))
PROGRAMS = [s for s in SCRIPTS if "def main(" in (ROOT / "loadtests" / s).read_text()]


@pytest.mark.parametrize("script", PROGRAMS)
@pytest.mark.parametrize("how", ["file", "module"])
def test_the_script_starts_and_explains_itself(script: str, how: str) -> None:
    target = [str(ROOT / "loadtests" / script)] if how == "file" else ["-m", f"loadtests.{script[:-3]}"]
    run = subprocess.run(
        [sys.executable, *target, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout, run.stdout[:500]
