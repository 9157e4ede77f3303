"""How fast `ndxp up` brings a SIGKILLed part back: seconds to its /readyz and to a caller's first 200.

Starts a local Kafka (or uses NDXP_KAFKA_BOOTSTRAP) and ``ndxp up``, waits for
the adapters' warm spare, then ``--kills`` times: SIGKILLs the adapters
process, and measures from the kill to the adapters' ``/readyz`` answering
200 again and to the first 200 of one caller of ``bca/citizen`` that calls
back to back (each call waits for its answer). Kills are ``--gap`` seconds
apart (more than 60 s: a part that dies again within a minute is restarted
after a backoff). Prints one line per kill and, with ``--json``, the figures;
how each restart went (the warm spare, or a new process) is read from
``ndxp up``'s log.

    .venv/bin/python loadtests/restart.py --kills 3

Loopback only; bounded (each kill waits at most 30 s). Exit status 1 if the
part did not come back.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from loadtests.bench import kafka_bootstrap, running_platform
from loadtests.running import cmdline, descendants

WAIT_S = 30.0
BODY = b'{"cccd":"001090000111"}'


def call(base: str) -> int:
    """One exchange of bca/citizen: its status (-1: no HTTP answer)."""
    req = urllib.request.Request(
        base + "/v1/exchange/bca/citizen", data=BODY, method="POST",
        headers={"Authorization": "Bearer demo-hanoi", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return -1


def ready_after(url: str, t0: float, out: dict[str, float]) -> None:
    """Poll ``url`` until it answers 200 (after the kill); seconds since ``t0`` into ``out``."""
    while time.monotonic() - t0 < WAIT_S:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200 and time.monotonic() - t0 > 0.05:  # not the dead one's last answer
                    out["ready_s"] = round(time.monotonic() - t0, 3)
                    return
        except OSError:
            pass
        time.sleep(0.01)


def kill_once(base: str, up_pid: int, metrics_port: int) -> dict[str, Any]:
    (pid,) = [p for p in descendants(up_pid) if "broker.cli adapter" in cmdline(p)]
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    figures: dict[str, Any] = {"ready_s": None, "first_ok_s": None}
    watcher = threading.Thread(
        target=ready_after, args=(f"http://127.0.0.1:{metrics_port}/readyz", t0, figures)
    )
    watcher.start()
    while time.monotonic() - t0 < WAIT_S:
        if call(base) == 200:
            figures["first_ok_s"] = round(time.monotonic() - t0, 3)
            break
        time.sleep(0.01)
    watcher.join()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--gap", type=float, default=62.0, help="seconds between kills")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    if not 1 <= args.kills <= 20:
        parser.error("--kills: 1 to 20")
    kills: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="ndxp-restart-") as tmp,
        kafka_bootstrap(Path(tmp)) as bootstrap,
        running_platform(Path(tmp), bootstrap, 1) as (base, up),
    ):
        log = Path(tmp) / "up.log"
        metrics_port = int(log.read_text().split("adapters http://127.0.0.1:")[1].split("/")[0])
        if call(base) != 200:
            print("the platform does not answer bca/citizen", file=sys.stderr)
            return 1
        time.sleep(8)  # the warm spare is made 5 s after the start
        for k in range(args.kills):
            if k:
                print(f"waiting {args.gap:g}s (no restart backoff) ...", flush=True)
                time.sleep(args.gap)
            figures = kill_once(base, up.pid, metrics_port)
            taken = log.read_text().count("warm spare took over")
            figures["by"] = (
                "warm spare" if taken > sum(f["by"] == "warm spare" for f in kills) else "new process"
            )
            kills.append(figures)
            print(f"kill {k + 1}: adapters ready after {figures['ready_s']} s, first 200 after "
                  f"{figures['first_ok_s']} s ({figures['by']})", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"kills": kills}, indent=2))
    return 0 if all(f["first_ok_s"] is not None and f["ready_s"] is not None for f in kills) else 1


if __name__ == "__main__":
    sys.exit(main())
