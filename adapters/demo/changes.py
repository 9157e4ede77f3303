"""`ndxp changes`: a simulated change feed, so that an operator sees events flow.

The simulated agencies publish realistic changes through the gateway, with
their own keys (``demo-<provider>``), at ``--rate`` events a second in all:
citizens moving (``bca/address_changed``), deaths registered
(``btp/death_registered``), businesses suspended, resumed or dissolved
(``dkkd/business_status_changed``). Every subject exists in the synthetic
databases. ``ndxp up --changes N`` runs it beside the platform; it prints
what it published every 10 s and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from adapters.demo import synthetic
from broker.lifecycle import on_stop_signal

PROVINCE_NAMES = list(synthetic.PROVINCES.values())
WARDS = ["Phường Cửa Nam", "Phường Hàng Bạc", "Phường Bến Nghé", "Phường Hải Châu I", "Xã Tân Lập",
         "Phường Vĩnh Trại", "Phường Lê Lợi", "Xã Phú Mỹ"]  # fmt: skip


def _person(r: random.Random, years: tuple[int, int]) -> synthetic.Person:
    return synthetic.existing_person(r, gender=r.choice(["male", "female"]), year=r.randint(*years))


def address_changed(r: random.Random, today: dt.date) -> dict[str, Any]:
    p = _person(r, (1950, 2005))
    return {
        "cccd": p.cccd,
        "address": {"street": f"Số {r.randrange(1, 300)} {r.choice(synthetic.STREETS)}",
                    "ward": r.choice(WARDS), "province": r.choice(PROVINCE_NAMES)},
        "moved_on": today.isoformat(),
        "registration_id": f"TT{r.randrange(16**12):012X}",
    }  # fmt: skip


def death_registered(r: random.Random, today: dt.date) -> dict[str, Any]:
    p = _person(r, (1925, 1965))
    return {
        "cccd": p.cccd,
        "full_name": p.full_name,
        "date_of_death": (today - dt.timedelta(days=r.randrange(0, 5))).isoformat(),
        "province": r.choice(PROVINCE_NAMES),
        "certificate_no": f"KT{today.year}{r.randrange(10**4):04d}",
    }


def business_status_changed(r: random.Random, today: dt.date) -> dict[str, Any]:
    while True:  # a registered enterprise that is not dissolved already
        e = synthetic.enterprise(f"0{r.randrange(10**9):09d}")
        if e is not None and e.status != "dissolved":
            break
    status = (
        r.choice(["suspended", "dissolved"]) if e.status == "active" else r.choice(["active", "dissolved"])
    )
    return {"enterprise_code": e.code, "name": e.name[:200], "status": status, "previous_status": e.status,
            "effective_on": today.isoformat()}  # fmt: skip


# (weight, provider, event type, maker): a move is far more common than a business closing.
FEED: list[tuple[int, str, str, Callable[[random.Random, dt.date], dict[str, Any]]]] = [
    (70, "bca", "address_changed", address_changed),
    (10, "btp", "death_registered", death_registered),
    (20, "dkkd", "business_status_changed", business_status_changed),
]


async def run_changes(base_url: str, rate: float, progress: Callable[[str], Any] = print) -> None:
    """Publish ``rate`` events a second until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    with on_stop_signal(stop.set):
        await _publish(base_url, rate, stop, progress)


async def _publish(base_url: str, rate: float, stop: asyncio.Event, progress: Callable[[str], Any]) -> None:
    r = random.Random(20261201)  # noqa: S311 - synthetic subjects, not secrets
    published: Counter[str] = Counter()
    failed = 0
    interval = 1.0 / rate
    report_at = time.monotonic() + 10
    progress(f"change feed: publishing {rate:g} events/s to {base_url}")
    async with aiohttp.ClientSession(base_url=base_url, timeout=aiohttp.ClientTimeout(total=10)) as http:
        next_at = time.monotonic()
        while not stop.is_set():
            _, provider, type_, make = r.choices(FEED, weights=[f[0] for f in FEED])[0]
            try:
                async with http.post(
                    f"/v1/events/{provider}/{type_}",
                    json=make(r, dt.date.today()),
                    headers={"Authorization": f"Bearer demo-{provider}"},
                ) as resp:
                    if resp.status == 202:
                        published[f"{provider}/{type_}"] += 1
                    else:
                        failed += 1
            except (aiohttp.ClientError, TimeoutError):
                failed += 1
            now = time.monotonic()
            if now >= report_at:
                report_at = now + 10
                progress(
                    f"change feed: {sum(published.values())} published {dict(published)}, {failed} failed"
                )
            next_at = max(next_at + interval, now - 1.0)  # no burst to catch up after a stall
            if next_at > now:
                try:
                    async with asyncio.timeout(next_at - now):
                        await stop.wait()
                except TimeoutError:
                    pass
    progress(f"change feed stopped: {sum(published.values())} published, {failed} failed")
