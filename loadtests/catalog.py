"""A synthetic catalog for the catalog-size benchmark: N providers × M lookup services.

``write`` makes what the live registry imports (``ndxp registry import
--schemas DIR/schemas DIR/registry.yaml``): the synthetic provider agencies,
one contract per service, and a benchmark client ``bench`` (key
``demo-bench``) with a right to every synthetic provider and to the demo's;
``serve`` runs their adapters (one per provider, as ``ndxp adapter`` does,
sharing one reply producer) with a trivial in-process handler until
SIGTERM. Service *i* of a catalog of *N* is
``syn<N>-<per_provider>-<i // per_provider>/lookup<i % per_provider>``: each catalog has
providers of its own (new consumer groups), so that one size's adapters never
inherit another's (a static member that rejoins keeps its old assignment).

    python -m loadtests.catalog write --services 1000 --out /tmp/catalog
    python -m loadtests.catalog serve --services 1000
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

BENCH_CLIENT = "bench"
BENCH_KEY = "demo-bench"
PER_PROVIDER = 10
"""Services per synthetic provider, unless told."""


def layout(services: int, per_provider: int = PER_PROVIDER) -> dict[str, list[str]]:
    """Provider → its services, for a catalog of ``services`` services."""
    out: dict[str, list[str]] = {}
    for i in range(services):
        provider = f"syn{services}-{per_provider}-{i // per_provider:04d}"
        out.setdefault(provider, []).append(f"lookup{i % per_provider:03d}")
    return out


def contract(provider: str, service: str) -> dict[str, Any]:
    """A lookup's contract: an identifier in, a small record out."""
    ident = {"type": "string", "pattern": "^[0-9]{9}$"}
    return {
        "title": f"Synthetic lookup {provider}/{service}",
        "description": "A generated service of the catalog-size benchmark.",
        "version": "1.0",
        "mode": "sync",
        "timeout_ms": 3000,
        "request": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "additionalProperties": False,
            "required": ["id"],
            "properties": {"id": ident},
        },
        "response": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "provider", "service"],
            "properties": {"id": ident, "provider": {"type": "string"}, "service": {"type": "string"}},
        },
        "examples": [{"id": "000000001"}],
    }


def write(out: Path, services: int, per_provider: int, base: Path | None = None) -> Path:
    """The registry file (agencies and the client's rights) and contracts of a catalog, under ``out``;
    returns the registry file. ``base``: a registry file whose agencies it also lists (the client
    gets a right to each of them that provides a service)."""
    import yaml

    given = yaml.safe_load(base.read_text()) if base is not None else {}
    known = given.get("agencies", [])
    rights = sorted({right.split("/")[0] for rs in given.get("rights", {}).values() for right in rs})
    providers = layout(services, per_provider)
    (out / "schemas").mkdir(parents=True, exist_ok=True)
    for provider, names in providers.items():
        folder = out / "schemas" / provider
        folder.mkdir(parents=True, exist_ok=True)
        for service in names:
            (folder / f"{service}.json").write_bytes(orjson.dumps(contract(provider, service)))
    agencies: list[dict[str, Any]] = [*known] + [
        {"id": p, "code": f"SYN.{p.upper()}", "name": f"Synthetic agency {p}"} for p in providers
    ]
    agencies.append({
        "id": BENCH_CLIENT, "code": "BENCH", "name": "The catalog benchmark's client",
        "keys_sha256": [hashlib.sha256(BENCH_KEY.encode()).hexdigest()],
        "rate_limit": 10**7, "max_in_flight": 10**5,
    })  # fmt: skip
    registry = out / "registry.yaml"
    doc = {"agencies": agencies, "rights": {BENCH_CLIENT: [f"{p}/*" for p in [*rights, *providers]]}}
    registry.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return registry


def mix(services: int, per_provider: int = PER_PROVIDER) -> list[tuple[str, str, dict[str, Any]]]:
    """Every service of a catalog once, as the light generator's even mix (key, service, body)."""
    keys = [f"{p}/{s}" for p, names in layout(services, per_provider).items() for s in names]
    return [(BENCH_KEY, key, {"id": f"{i:09d}"}) for i, key in enumerate(keys)]


async def serve(services: int, per_provider: int) -> None:
    """The synthetic providers' adapters until SIGTERM/SIGINT."""
    from prometheus_client import CollectorRegistry

    from adapters.demo.serve import serve_until_stopped
    from adapters.runtime import Handler, Request
    from adapters.runtime.adapter import Adapter
    from broker.kafka import make_producer
    from broker.metrics import AdapterMetrics
    from broker.settings import Settings

    def answer(provider: str, service: str) -> Handler:
        async def handler(req: Request) -> dict[str, Any]:
            return {"id": req.body["id"], "provider": provider, "service": service}

        return handler

    settings = Settings.from_env()
    metrics = AdapterMetrics(CollectorRegistry())
    producer = make_producer(settings, client_id="ndxp-bench-catalog")
    await producer.start()
    try:
        adapters = [
            Adapter(
                settings, p, {s: answer(p, s) for s in names}, writes=[], metrics=metrics, producer=producer
            )
            for p, names in layout(services, per_provider).items()
        ]
        await serve_until_stopped(adapters, lambda m: print(m, flush=True))
    finally:
        await producer.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("write", "serve"):
        p = sub.add_parser(name)
        p.add_argument("--services", type=int, required=True)
        p.add_argument("--per-provider", type=int, default=PER_PROVIDER)
        if name == "write":
            p.add_argument("--out", type=Path, required=True)
            p.add_argument("--base", type=Path, help="a registry file whose agencies it lists too")
    args = parser.parse_args(argv)
    if args.cmd == "write":
        print(write(args.out, args.services, args.per_provider, args.base))
        return 0
    import uvloop

    uvloop.run(serve(args.services, args.per_provider))
    return 0


if __name__ == "__main__":
    sys.exit(main())
