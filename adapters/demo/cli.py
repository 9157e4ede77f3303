"""The demo's commands, added to ``ndxp`` through the ``ndxp.commands`` entry point.

``ndxp adapter <agency>…`` serves simulated agencies, ``ndxp backend land``
runs the land registry's own REST backend, ``ndxp changes`` a simulated
change feed that publishes events through the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from broker.commands import positive_rate, progress, run_part
from broker.settings import Settings


def _adapter(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.demo.serve import run_adapters

    return run_part("adapter", lambda s, p: run_adapters(s, args.agencies, progress=p), settings, args)


def _backend(settings: Settings, args: argparse.Namespace) -> int:
    import uvloop

    from adapters.demo.land_backend import serve_backend
    from broker.lifecycle import on_stop_signal

    async def run() -> None:
        task = asyncio.create_task(serve_backend(settings, args.port))
        progress(f"land registry backend on http://{settings.internal_host}:{args.port}")
        with on_stop_signal(task.cancel):
            try:
                await task
            except asyncio.CancelledError:
                progress("land registry backend stopped")

    uvloop.run(run())
    return 0


def _changes(settings: Settings, args: argparse.Namespace) -> int:
    import uvloop

    from adapters.demo.changes import run_changes

    uvloop.run(run_changes(args.url, args.rate, progress))
    return 0


def register(sub: Any) -> None:
    """Add the demo's commands to ``ndxp``'s subparsers."""
    changes = sub.add_parser("changes", help="a simulated change feed: agencies publish events")
    changes.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    changes.add_argument("--rate", type=positive_rate, default=5.0, metavar="N/s")
    changes.set_defaults(func=_changes)

    backend = sub.add_parser("backend", help="an agency's own REST backend (simulated)")
    backend.add_argument("name", choices=("land",))
    backend.add_argument("--port", type=int, default=8091)
    backend.set_defaults(func=_backend)

    adapter = sub.add_parser("adapter", help="adapters of simulated agencies")
    adapter.add_argument("agencies", nargs="+", metavar="agency")
    adapter.add_argument("--metrics-port", type=int, default=None)
    adapter.set_defaults(func=_adapter)
