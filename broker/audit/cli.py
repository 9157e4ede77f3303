"""``ndxp audit serve | verify | export | keygen``: the exchange log from a terminal."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvloop

from broker.audit.log import load_signer
from broker.audit.note import Signer
from broker.audit.verify import Tampered, export_day, verify_bundle, verify_kafka
from broker.commands import progress, run_part
from broker.settings import Settings


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from broker.audit.serve import run_audit

    if args.port is not None:
        settings = settings.replace(audit_port=args.port)
    return run_part("audit", run_audit, settings, args)


def _anchors(settings: Settings, args: argparse.Namespace) -> set[str]:
    given = set(args.key or [])
    for path in args.keys_file or []:
        given.update(k for k in Path(path).read_text().split() if k)
    return given


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.bundle is not None:
            check = verify_bundle(args.bundle, _anchors(settings, args) or None)
            where = str(args.bundle)
        else:
            anchors = _anchors(settings, args)
            if not anchors and (settings.audit_key or (settings.cache_dir / "audit.key").exists()):
                anchors = {load_signer(settings).verifier().text()}
            progress(f"verifying the exchange log in Kafka ({settings.tx_topic}.log*)")
            check = uvloop.run(verify_kafka(settings, anchors, progress))
            where = "Kafka"
    except Tampered as exc:
        progress(f"ndxp audit verify: FAILED: {exc}")
        return 1
    keys = ", ".join(k.split("+")[1] for k in check.keys_seen) or "the bundle's start key"
    progress(
        f"ndxp audit verify: OK: {check.frontier.size} leaves, {check.checked} checkpoints checked "
        f"({where}); keys {keys}"
    )
    return 0


def _export(settings: Settings, args: argparse.Namespace) -> int:
    try:
        uvloop.run(export_day(settings, args.day, args.out, progress))
    except Tampered as exc:
        progress(f"ndxp audit export: {exc}")
        return 1
    return 0


def _keygen(settings: Settings, args: argparse.Namespace) -> int:
    signer = Signer.generate(args.name or settings.audit_origin)
    print(signer.text())  # the secret, for NDXP_AUDIT_KEY
    progress(f"verifier key: {signer.verifier().text()}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="the verifiable exchange log: serve, verify, export")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    serve = asub.add_parser("serve", help="append ndxp.tx to the log, sign checkpoints, serve proofs")
    serve.add_argument("--port", type=int, default=None, help="the internal API's port (NDXP_AUDIT_PORT)")
    serve.add_argument("--metrics-port", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)
    verify = asub.add_parser("verify", help="recompute the log and check every checkpoint (exit 1: tampered)")
    verify.add_argument("--bundle", type=Path, default=None, help="check an exported bundle, offline")
    verify.add_argument("--key", action="append", metavar="VKEY", help="a trusted verifier key")
    verify.add_argument("--keys-file", action="append", metavar="FILE", help="trusted verifier keys")
    verify.set_defaults(func=_verify)
    export = asub.add_parser("export", help="write one day's verifiable bundle")
    export.add_argument("--day", required=True, help="YYYY-MM-DD, in the counting time zone")
    export.add_argument("--out", type=Path, required=True)
    export.set_defaults(func=_export)
    keygen = asub.add_parser("keygen", help="print a new signer key (for NDXP_AUDIT_KEY)")
    keygen.add_argument("--name", default=None, help="the key's name (default NDXP_AUDIT_ORIGIN)")
    keygen.set_defaults(func=_keygen)
