"""Tables of measured figures, made from the JSON the benchmark and fault scripts write.

The documentation shows these (its build hook, ``docs/hooks.py``, replaces
``<!-- figures: NAME.json -->`` with the table of ``docs/NAME.json``), so a
page's figures are always those of the last run whose JSON was committed.

    .venv/bin/python -m loadtests.figures docs/bench.json     # print one table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

FAULT_NAMES = {
    "broker-kill": "SIGKILL a Kafka broker (restarted after 10 s)",
    "gateway-worker": "SIGKILL a gateway worker",
    "adapters": "SIGKILL the adapters",
    "counter": "SIGKILL the counter",
    "broker-pause": "SIGSTOP a broker for 10 s",
    "kafka-down": "SIGSTOP all of Kafka for 10 s",
    "sse-kafka-down": "SIGSTOP all of Kafka for 10 s, an event stream open",
    "keeper": "SIGKILL the keeper (async exchanges open)",
    "broker-lost": "SIGKILL a Kafka broker (never restarted)",
}


def _n(value: float) -> str:
    return f"{value:,.0f}"


def bench_table(rows: list[dict[str, Any]]) -> str:
    """``bench.py --out``'s ``bench.json``: one row per concurrency."""
    out = [
        "| callers | raw Kafka/s | exchanges/s | p50 ms | p99 ms | failed | of raw | counted = answered |"
        " CPU ms per exchange |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        ex = r["exchange"]
        cpu = ", ".join(f"{part} {ms:.3f}" for part, ms in r["cpu_ms_per_exchange"].items())
        same = "=" if r["exact"] else "≠"
        out.append(
            f"| {r['users']} | {_n(r['raw']['rps'])} | {_n(ex['rps'])} | {ex['p50']:.1f} | {ex['p99']:.1f} "
            f"| {ex['failures']} | {r['ratio']:.0%} "
            f"| {_n(r['counted'])} {same} {_n(r['responses'])} | {cpu} |"
        )
    return "\n".join(out)


def catalog_table(rows: list[dict[str, Any]]) -> str:
    """``bench.py --catalog --out``'s ``catalog.json``: the demo catalog evenly, then each synthetic
    catalog size evenly, each beside the raw ceiling measured just before it."""
    out = [
        "| catalog, called evenly | raw Kafka/s | exchanges/s | p50 ms | p99 ms | failed | of raw "
        "| counted = answered | CPU ms per exchange (total) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        ex = r["exchange"]
        cpu = r["cpu_ms_per_exchange"]
        parts = ", ".join(f"{part} {ms:.3f}" for part, ms in cpu.items() if ms >= 0.0005)
        name = (f"{_n(r['services'])} synthetic, {r.get('providers', '?')} providers" if r["synthetic"]
                else r.get("only") or f"the demo's {r['services']}")  # fmt: skip
        out.append(
            f"| {name} | {_n(r['raw']['rps'])} | {_n(ex['rps'])} | {ex['p50']:.1f} | {ex['p99']:.1f} "
            f"| {ex['failures'] + ex['errors']} | {r['ratio']:.1%} "
            f"| {_n(r['counted'])} {'=' if r['exact'] else '≠'} {_n(r['responses'])} "
            f"| {parts} ({sum(cpu.values()):.3f}) |"
        )
    return "\n".join(out)


def faults_table(rows: list[dict[str, Any]]) -> str:
    """``faults.py``'s ``faults.json``: one row per fault; over the fault's window (its injection to its
    end, at least 10 s): failed calls of those sent, by kind, p99, seconds to the first success."""
    out = [
        "| fault | answered | answered, not counted | counted twice | failed / sent in window "
        "| p99 ms in window | s to first success | failed by kind |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        name = FAULT_NAMES.get(r["fault"], r["fault"])
        kinds = ", ".join(f"{n} × {k}" for k, n in sorted(r.get("window_failed_by_kind", {}).items())) or "–"
        first = r.get("first_ok_s")
        out.append(
            f"| {name} | {_n(r['answered'])} | {r['not_counted']} | {r['counted_twice']} "
            f"| {_n(r.get('window_failed', 0))} / {_n(r.get('window_calls', 0))} "
            f"| {_n(r.get('window_p99_ms', 0))} | {'–' if first is None else f'{first:.2f}'} | {kinds} |"
        )
    return "\n".join(out)


def table(path: Path) -> str:
    """The table of a figures file, chosen by its name."""
    rows = json.loads(path.read_text())
    if path.name.startswith("catalog"):
        return catalog_table(rows)
    if path.name.startswith("bench"):
        return bench_table(rows)
    if path.name.startswith("faults"):
        return faults_table(rows)
    raise ValueError(f"{path}: no table for this file (bench*, catalog* or faults*.json)")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(table(Path(arg)))
