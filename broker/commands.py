"""Building blocks of the ``ndxp`` command, shared by the platform's commands and the plugins'.

A plugin is a callable registered in the ``ndxp.commands`` entry point group
(pyproject.toml); it is given the subparsers of ``ndxp`` and adds its
commands, each with ``set_defaults(func=f)`` where ``f(settings, args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from broker.errors import PartFailed
from broker.settings import Settings

COMMANDS = "ndxp.commands"
"""The entry point group of plugin commands."""


def progress(message: str) -> None:
    """A progress line for the operator (stderr: stdout stays for what a command prints)."""
    print(message, file=sys.stderr, flush=True)


def positive_rate(raw: str) -> float:
    """An argparse type: a rate in events per second (``5`` or ``5/s``)."""
    rate = float(raw.removesuffix("/s"))
    if not 0 < rate <= 10_000:
        raise argparse.ArgumentTypeError("a rate from 0 (exclusive) to 10000 events/s")
    return rate


def run_part(
    name: str,
    run: Callable[[Settings, Callable[[str], Any]], Coroutine[Any, Any, None]],
    settings: Settings,
    args: argparse.Namespace,
) -> int:
    """Run one long-running part under uvloop; exit 1 (for a restart) when its Kafka loop dies."""
    import uvloop

    if args.metrics_port is not None:
        settings = settings.replace(metrics_port=args.metrics_port)
    try:
        uvloop.run(run(settings, progress))
    except PartFailed as exc:
        progress(f"ndxp {name}: {exc}; exiting for a restart")
        return 1
    return 0


STANDBY = "NDXP_STANDBY"
"""Set (to 1) in a warm spare's environment: see :func:`stand_by`."""
STANDBY_TITLE = "ndxp standby"


def stand_by(args: argparse.Namespace) -> bool:
    """A warm spare (``ndxp up`` keeps one per part that callers wait for): import what the command
    will need (its ``preload`` modules), then wait for ``go`` on stdin, so that a restart costs no
    interpreter start and no imports; False (exit) at end of input. While it waits, its process title
    is "ndxp standby: …", so that nothing mistakes it for the part it stands in for."""
    import setproctitle

    del os.environ[STANDBY]  # what it starts once promoted (a gateway's workers) is no spare
    title = " ".join(sys.orig_argv)
    setproctitle.setproctitle(f"{STANDBY_TITLE}: {args.command}")
    for module in getattr(args, "preload", ()):
        importlib.import_module(module)
    if sys.stdin.readline().strip() != "go":
        return False
    setproctitle.setproctitle(title)
    return True
