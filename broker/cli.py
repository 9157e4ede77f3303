"""The ``ndxp`` command: run the platform or any one of its parts.

The platform's own commands are here; packages add theirs through the
``ndxp.commands`` entry point group (the demo's simulated agencies add
``ndxp adapter``, ``ndxp backend`` and ``ndxp changes``), so that the
platform never imports the agencies it carries.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from aiokafka.errors import KafkaError

from broker.commands import COMMANDS, STANDBY, positive_rate, progress, run_part, stand_by
from broker.dev.localkafka import LocalKafka, state_file
from broker.errors import SettingsError, StartupError
from broker.logs import setup_logging
from broker.settings import Settings, child_environment


def _kafka_start(settings: Settings, args: argparse.Namespace) -> int:
    path = state_file(settings)
    if path.exists():
        previous = LocalKafka.from_state(settings, path)
        if previous.running():
            progress(
                f"a local Kafka is already running at {previous.bootstrap} "
                f"(data in {previous.data_dir}); stop it first with `ndxp kafka stop`"
            )
            return 1
        path.unlink()
    kafka = LocalKafka(
        settings, nodes=args.nodes, data_dir=args.data_dir, progress=progress, secure=args.secure
    )
    bootstrap = kafka.start()
    kafka.save_state(path)
    print(bootstrap)
    progress(f"export NDXP_KAFKA_BOOTSTRAP={bootstrap}   # stop with: ndxp kafka stop")
    if args.secure:
        client = kafka.client_settings()
        progress("SASL_SSL with Kafka's StandardAuthorizer; the platform's parts connect as its super user:")
        for name, value in sorted(child_environment(client).items()):
            if name.startswith("NDXP_KAFKA_") and name != "NDXP_KAFKA_BOOTSTRAP":
                progress(f"export {name}={value}")
    return 0


def _kafka_stop(settings: Settings, args: argparse.Namespace) -> int:
    path = state_file(settings)
    if not path.exists():
        progress("no local Kafka recorded as running (nothing to stop)")
        return 0
    kafka = LocalKafka.from_state(settings, path)
    given = getattr(args, "data_dir", None)
    if given is not None and given.resolve() != kafka.data_dir.resolve():
        progress(
            f"the local Kafka at {kafka.bootstrap} keeps its data in {kafka.data_dir}, not {given}; "
            "nothing stopped (run `ndxp kafka stop` to stop it)"
        )
        return 1
    progress(f"stopping local Kafka at {kafka.bootstrap} ({len(kafka.pids)} node process(es))")
    kafka.stop()
    path.unlink(missing_ok=True)
    progress("stopped" + (f"; removed {kafka.data_dir}" if kafka.temporary else ""))
    return 0


def _kafka_status(settings: Settings, _: argparse.Namespace) -> int:
    path = state_file(settings)
    if not path.exists():
        print("not running")
        return 1
    kafka = LocalKafka.from_state(settings, path)
    if not kafka.running():
        print("not running (stale state; `ndxp kafka stop` clears it)")
        return 1
    print(f"running at {kafka.bootstrap}, data in {kafka.data_dir}")
    return 0


def _gateway(settings: Settings, args: argparse.Namespace) -> int:
    from broker.gateway.workers import run_gateway

    settings = settings.replace(
        port=args.port if args.port is not None else settings.port,
        workers=args.workers if args.workers is not None else settings.workers,
        host=args.host if args.host is not None else settings.host,
    )
    from broker.admin.serve import admin_main

    return run_gateway(settings, progress=progress, beside=admin_main)


def _counter(settings: Settings, args: argparse.Namespace) -> int:
    from broker.counter.serve import run_counter

    return run_part("counter", run_counter, settings, args)


def _keeper(settings: Settings, args: argparse.Namespace) -> int:
    from broker.keeper.serve import run_keeper

    return run_part("keeper", run_keeper, settings, args)


def _up(settings: Settings, args: argparse.Namespace) -> int:
    from broker.dev.platform import LOAD_TEST_FACTOR, load_test_registry, run_platform

    settings = settings.replace(port=args.port if args.port is not None else settings.port)
    if args.load_test_limits:
        out = settings.cache_dir / f"load-test-registry.{settings.port}.yaml"
        settings = settings.replace(registry_path=load_test_registry(settings.registry_path, out))
        progress(f"ndxp up: load-test limits: every agency's rate limit x{LOAD_TEST_FACTOR} "
                 "(a new platform's registry; one kept in --data-dir keeps its own)")  # fmt: skip
    return run_platform(
        settings, data_dir=args.data_dir, changes=args.changes, progress=progress, secure=args.secure
    )


def _status(settings: Settings, args: argparse.Namespace) -> int:
    import urllib.parse

    from broker.ops.status import run_status, state_path

    gateway = args.url.rstrip("/")
    port = urllib.parse.urlsplit(gateway).port or 80
    parts = {"gateway": f"{gateway}/metrics"}
    saved = state_path(settings.cache_dir, port)
    key = args.key or settings.admin_key
    if saved.exists():  # written by `ndxp up`: where its parts' metrics are, and its operator's key
        state = json.loads(saved.read_text())
        parts.update(state.get("metrics", {}))
        key = key or state.get("operator_key")
    else:
        parts.update({p: f"http://127.0.0.1:{n}/metrics" for p, n in (("adapters", 9101), ("counter", 9102),
                                                                      ("keeper", 9103))})  # fmt: skip
    for item in args.part or []:
        name, _, url = item.partition("=")
        if not url:
            raise StartupError(f"--part {item!r}: expected name=url")
        parts[name] = url
    return run_status(
        gateway, parts, prometheus=args.prometheus, once=args.once, interval_s=args.interval, key=key
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ndxp`` (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="ndxp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    kafka = sub.add_parser("kafka", help="a local Apache Kafka (KRaft) on loopback")
    ksub = kafka.add_subparsers(dest="kafka_command", required=True)
    start = ksub.add_parser("start", help="start a local Kafka and print its bootstrap address")
    start.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    start.add_argument(
        "--secure", action="store_true",
        help="SASL_SSL (SCRAM-SHA-512 over TLS) with Kafka's StandardAuthorizer: member adapters get "
        "users fenced by ACLs",
    )  # fmt: skip
    start.add_argument(
        "--data-dir", type=Path, default=None,
        help="keep data here across restarts (default: a temporary directory removed on stop)",
    )  # fmt: skip
    start.set_defaults(func=_kafka_start)
    stop = ksub.add_parser("stop", help="stop the local Kafka started by `ndxp kafka start`")
    stop.add_argument(
        "--data-dir", type=Path, default=None,
        help="the directory given to start (checked: the Kafka with data there is the one stopped)",
    )  # fmt: skip
    stop.set_defaults(func=_kafka_stop)
    ksub.add_parser("status", help="is the local Kafka running?").set_defaults(func=_kafka_status)

    up = sub.add_parser("up", help="the whole platform on this machine; Ctrl-C stops all")
    up.add_argument("--port", type=int, default=None, help="gateway port (default 8080)")
    up.add_argument("--data-dir", type=Path, default=None, help="keep Kafka data here")
    up.add_argument(
        "--secure", action="store_true",
        help="run Kafka with SASL_SSL and ACLs (the platform as its super user; member adapters with "
        "the credentials POST /admin/v1/agencies/{id}/kafka-credentials issues)",
    )  # fmt: skip
    up.add_argument(
        "--changes", type=positive_rate, default=None, metavar="N/s",
        help="also run a simulated change feed publishing N events a second (off by default)",
    )  # fmt: skip
    up.add_argument(
        "--load-test-limits", action="store_true",
        help="raise every agency's rate limit x1000 for a load test (Locust, loadtests/): failures "
        "then are the platform's, not the demo clients' own 429s",
    )  # fmt: skip
    up.set_defaults(func=_up)
    status = sub.add_parser(
        "status", help="a live view of a running platform (parts, rates, latency, errors)"
    )
    status.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    status.add_argument("--part", action="append", metavar="NAME=URL", help="another part's /metrics")
    status.add_argument(
        "--key",
        help="an operator's API key for the gateway's /metrics and /v1/stats (default: NDXP_ADMIN_KEY)",
    )
    status.add_argument("--prometheus", metavar="URL", help="ask this Prometheus instead of the parts")
    status.add_argument("--once", action="store_true", help="print one frame and exit")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    status.set_defaults(func=_status)

    gateway = sub.add_parser("gateway", help="the REST gateway (N processes on one port)")
    gateway.add_argument("--port", type=int, default=None)
    gateway.add_argument("--host", default=None)
    gateway.add_argument("--workers", type=int, default=None)
    gateway.set_defaults(func=_gateway)

    counter = sub.add_parser("counter", help="exact transaction counts from ndxp.tx")
    counter.add_argument("--metrics-port", type=int, default=None)
    counter.set_defaults(func=_counter)
    keeper = sub.add_parser("keeper", help="finish async and idempotent exchanges; deliver callbacks")
    keeper.add_argument("--metrics-port", type=int, default=None)
    keeper.set_defaults(func=_keeper)

    from broker.admin.cli import add_commands
    from broker.audit.cli import add_commands as add_audit_commands

    add_commands(sub)
    add_audit_commands(sub)
    for plugin in entry_points(group=COMMANDS):  # the demo's agencies, an agency's own adapter kit
        plugin.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ndxp`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if os.environ.get(STANDBY) == "1" and not stand_by(args):
            return 0
    except KeyboardInterrupt:  # Ctrl-C reaches the spare too (its terminal's process group)
        return 130
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        progress(f"ndxp: configuration error: {exc}")
        return 2
    setup_logging(settings.log_level)
    try:
        return int(args.func(settings, args))
    except (StartupError, KafkaError) as exc:  # aiokafka's own: Kafka refused or went away at start
        progress(f"ndxp: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
