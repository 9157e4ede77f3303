"""`ndxp up` as a child process, and the processes under it: for the benchmarks, the fault suite and tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (children, their children, ...)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cmdline(pid: int) -> str:
    """A process's command line ("" once it is gone)."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


@contextmanager
def ndxp_up(
    args: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    *,
    within_s: float = 180,
    stop: signal.Signals = signal.SIGTERM,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``ndxp up ARGS`` with its output in ``log_path``; yield once it prints "platform up".

    Raises RuntimeError with the log if it exits or is not up within
    ``within_s``. On leaving, sends ``stop`` (SIGINT: what Ctrl-C does) and
    waits up to 60 s for it to exit (then kills it); its exit code is then
    the Popen's ``returncode``.
    """
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "up", *args],
            cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + within_s
        while b"platform up" not in log_path.read_bytes():
            if up.poll() is not None:
                raise RuntimeError(f"ndxp up exited with {up.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ndxp up not up within {within_s:g}s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield up
    finally:
        if up.poll() is None:
            up.send_signal(stop)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
