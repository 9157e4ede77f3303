"""The demo's commands, added to ``ndxp`` through the ``ndxp.commands`` entry point.

``ndxp adapter <agency>…`` serves simulated agencies and bound services
(``--bound``: every provider's), ``ndxp backend land|bhxh`` runs the land
registry's own REST backend or social insurance's SOAP one, ``ndxp changes`` a simulated
change feed that publishes events through the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from broker.commands import positive_rate, progress, run_part
from broker.errors import AdapterSetupError
from broker.settings import Settings


def _adapter(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.demo.serve import run_adapters

    if not args.agencies and not args.bound:
        raise AdapterSetupError("name the agencies to serve, or --bound for every bound provider")
    if args.check:
        return _check(settings, args.agencies)
    return run_part(
        "adapter",
        lambda s, p: run_adapters(
            s, args.agencies, progress=p, every_bound=args.bound, contracts=args.contracts
        ),
        settings,
        args,
    )


def _check(settings: Settings, agencies: list[str]) -> int:
    """The contract test of agencies' own handlers, against the contracts in NDXP_SCHEMAS_DIR."""
    from contextlib import AsyncExitStack

    import uvloop

    from adapters.demo.agencies import handlers_for, known
    from adapters.runtime.contract import check_contracts
    from broker.contracts.catalog import Catalog

    catalog = Catalog.load(settings.schemas_dir)

    async def run() -> int:
        failed = 0
        async with AsyncExitStack() as resources:
            for agency in agencies:
                if not known(agency):
                    raise AdapterSetupError(f"no handlers for {agency!r} installed here")
                for f in await check_contracts(agency, handlers_for(agency, settings, resources), catalog):
                    where = f"{agency}/{f.service}" + (f" example {f.example}" if f.example >= 0 else "")
                    progress(f"{'ok  ' if f.ok else 'FAIL'} {where}: {f.what}")
                    failed += not f.ok
        progress(f"{failed} failure(s)" if failed else "every example answers within its contract")
        return 1 if failed else 0

    return uvloop.run(run())


def _backend(settings: Settings, args: argparse.Namespace) -> int:
    import uvloop

    from adapters.demo import land_backend, soap_backend
    from broker.lifecycle import on_stop_signal

    app = (land_backend if args.name == "land" else soap_backend).create_backend(settings)
    what = {"land": "land registry backend (REST)", "bhxh": "social insurance backend (SOAP)"}[args.name]

    async def run() -> None:
        task = asyncio.create_task(land_backend.serve_app(app, settings.internal_host, args.port))
        progress(f"{what} on http://{settings.internal_host}:{args.port}")
        with on_stop_signal(task.cancel):
            try:
                await task
            except asyncio.CancelledError:
                progress(f"{what} stopped")

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

    backend = sub.add_parser("backend", help="an agency's own backend (simulated): land (REST), bhxh (SOAP)")
    backend.add_argument("name", choices=("land", "bhxh"))
    backend.add_argument("--port", type=int, default=8091)
    backend.set_defaults(func=_backend)

    adapter = sub.add_parser("adapter", help="adapters of agencies: simulated ones' code, bound services")
    adapter.add_argument("agencies", nargs="*", metavar="agency")
    adapter.add_argument(
        "--contracts", type=Path, default=None, metavar="DIR",
        help="a member's own adapter: its contracts from these files (<provider>/<service>.json, as "
        "published), not the live registry its Kafka user may not read",
    )  # fmt: skip
    adapter.add_argument(
        "--check", action="store_true",
        help="do not serve: run the contract test of the agencies' handlers (their examples, no Kafka)",
    )  # fmt: skip
    adapter.add_argument(
        "--bound", action="store_true",
        help="also every provider with a bound service, now and as they are published",
    )  # fmt: skip
    adapter.add_argument("--metrics-port", type=int, default=None)
    adapter.set_defaults(func=_adapter, preload=("adapters.demo.serve",))  # a warm spare's (ndxp up)
