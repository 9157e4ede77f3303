"""The demo exchange mix: which client calls which service how often, with what request.

Shared by the Locust load test and the benchmark's light generator.
"""

from __future__ import annotations

import random
from typing import Any

from adapters.demo import synthetic


def _cccd(r: random.Random) -> str:
    return synthetic.make_cccd(
        r, gender=r.choice(["male", "female"]), year=r.randint(1950, 2005), province="001"
    )


# (client key, service, request maker): weights follow what portals ask most.
MIX: list[tuple[int, str, str, Any]] = [
    (40, "demo-hanoi", "bca/citizen", lambda r: {"cccd": _cccd(r)}),
    (20, "demo-vcb", "bca/verify_identity",
     lambda r: {"cccd": _cccd(r), "full_name": "Nguyễn Văn An", "birth_date": "1990-01-01"}),
    (10, "demo-dvcqg", "bhxh/health_card", lambda r: {"cccd": _cccd(r)}),
    (10, "demo-danang", "btp/judicial_record", lambda r: {"cccd": _cccd(r)}),
    (10, "demo-vcb", "dkkd/business", lambda r: {"enterprise_code": f"0{r.randrange(10**9):09d}"}),
    (5, "demo-vneid", "csgt/vehicle",
     lambda r: {"plate": f"29A-{r.randrange(1000):03d}.{r.randrange(100):02d}"}),
    (5, "demo-langson", "tnmt/land_parcel",
     lambda r: {"parcel_id": f"020-{r.randrange(10**5):05d}-{r.randint(1, 99)}-{r.randint(1, 999)}"}),
]  # fmt: skip
