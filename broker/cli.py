"""The ``ndxp`` command: run the platform or any one of its parts."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from broker.localkafka import LocalKafka, LocalKafkaError, state_file
from broker.settings import Settings, SettingsError


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _kafka_start(settings: Settings, args: argparse.Namespace) -> int:
    path = state_file(settings)
    if path.exists():
        previous = LocalKafka.from_state(settings, path)
        if previous.running():
            _progress(
                f"a local Kafka is already running at {previous.bootstrap} "
                f"(data in {previous.data_dir}); stop it first with `ndxp kafka stop`"
            )
            return 1
        path.unlink()
    kafka = LocalKafka(settings, nodes=args.nodes, data_dir=args.data_dir, progress=_progress)
    bootstrap = kafka.start()
    kafka.save_state(path)
    print(bootstrap)
    _progress(f"export NDXP_KAFKA_BOOTSTRAP={bootstrap}   # stop with: ndxp kafka stop")
    return 0


def _kafka_stop(settings: Settings, _: argparse.Namespace) -> int:
    path = state_file(settings)
    if not path.exists():
        _progress("no local Kafka recorded as running (nothing to stop)")
        return 0
    kafka = LocalKafka.from_state(settings, path)
    _progress(f"stopping local Kafka at {kafka.bootstrap} ({len(kafka.pids)} node process(es))")
    kafka.stop()
    path.unlink(missing_ok=True)
    _progress("stopped" + (f"; removed {kafka.data_dir}" if kafka.temporary else ""))
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ndxp`` (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="ndxp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    kafka = sub.add_parser("kafka", help="a local Apache Kafka (KRaft) on loopback")
    ksub = kafka.add_subparsers(dest="kafka_command", required=True)
    start = ksub.add_parser("start", help="start a local Kafka and print its bootstrap address")
    start.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    start.add_argument(
        "--data-dir", type=Path, default=None,
        help="keep data here across restarts (default: a temporary directory removed on stop)",
    )  # fmt: skip
    start.set_defaults(func=_kafka_start)
    ksub.add_parser("stop", help="stop the local Kafka started by `ndxp kafka start`").set_defaults(
        func=_kafka_stop
    )
    ksub.add_parser("status", help="is the local Kafka running?").set_defaults(func=_kafka_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ndxp`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        _progress(f"ndxp: configuration error: {exc}")
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(settings, args))
    except LocalKafkaError as exc:
        _progress(f"ndxp: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
