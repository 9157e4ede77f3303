"""``ndxp up``'s supervisor: a part that dies is restarted, by its warm spare when it has one."""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import setproctitle

from broker.commands import STANDBY, stand_by
from broker.dev import platform
from broker.dev.platform import Supervised

PART = """
import os, sys, time
from pathlib import Path
out = Path(sys.argv[1])
if os.environ.get("NDXP_STANDBY") == "1":
    if sys.stdin.readline().strip() != "go":
        sys.exit(0)
    how = "spare"
else:
    how = "cold"
with out.open("a") as f:
    f.write(f"{how} {os.getpid()}\\n")
time.sleep(60)
"""


def _started(out: Path, n: int) -> list[str]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = out.read_text().splitlines() if out.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.02)
    raise AssertionError(f"{n} starts expected: {out.read_text() if out.exists() else ''}")


def test_a_dead_part_is_taken_over_by_its_warm_spare_at_once_and_nothing_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform, "SPARE_AFTER_S", 0.0)
    out = tmp_path / "starts"
    script = tmp_path / "part.py"
    script.write_text(PART)
    said: list[str] = []
    part = Supervised("adapters", [sys.executable, str(script), str(out)], dict(os.environ), spare=True)
    try:
        assert _started(out, 1)[0].startswith("cold ")
        part.check(said.append)  # makes the spare
        spare = part.spare
        assert spare is not None
        assert spare.poll() is None
        time.sleep(0.3)
        assert len(_started(out, 1)) == 1, "a spare waits: it does not start the part"
        os.kill(part.proc.pid, signal.SIGKILL)
        part.proc.wait()
        part.check(said.append)  # the first restart is at once, by the spare
        assert part.proc is spare
        assert _started(out, 2)[1] == f"spare {spare.pid}"
        assert said[-1] == f"ndxp up: adapters restarted (pid {spare.pid}: its warm spare took over)"
        part.check(said.append)  # a new spare behind it (SPARE_AFTER_S is 0 here)
        assert part.spare is not None
        assert part.spare is not spare
        # Its spare gone too, a part is started cold.
        part.spare.kill()
        part.spare.wait()
        monkeypatch.setattr(platform, "SPARE_AFTER_S", 60.0)
        part.spare_at = time.monotonic() + 60
        part.check(said.append)  # finds it dead: no spare now, and none made for a while
        assert part.spare is None
        os.kill(part.proc.pid, signal.SIGKILL)
        part.proc.wait()
        part.check(said.append)
        while part.restart_at is not None:  # its second restart within a minute waits its backoff
            time.sleep(0.05)
            part.check(said.append)
        assert _started(out, 3)[2] == f"cold {part.proc.pid}"
        assert "started again" in said[-1]
    finally:
        procs = [p for p in (part.proc, part.spare) if p is not None]
        part.stop()
    assert all(p.poll() is not None for p in procs)


def test_a_spare_imports_what_its_command_needs_then_waits_for_go(monkeypatch: pytest.MonkeyPatch) -> None:
    title = setproctitle.getproctitle()
    args = argparse.Namespace(command="adapter", preload=("json.tool",))
    sys.modules.pop("json.tool", None)
    try:
        monkeypatch.setenv(STANDBY, "1")
        monkeypatch.setattr(sys, "stdin", io.StringIO("go\n"))
        assert stand_by(args)
        assert "json.tool" in sys.modules
        assert STANDBY not in os.environ, "what a promoted part starts is no spare"
        assert setproctitle.getproctitle() == " ".join(sys.orig_argv)
        monkeypatch.setenv(STANDBY, "1")
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # its supervisor went away
        assert not stand_by(args)
        assert setproctitle.getproctitle() == "ndxp standby: adapter"
    finally:
        setproctitle.setproctitle(title)
