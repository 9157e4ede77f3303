"""Locust load test of the exchange path: a realistic mix of demo services.

Run against a platform started by `scripts/ndxp up` (loopback only), bounded
in users and time, e.g.::

    .venv/bin/locust -f loadtests/locustfile.py --headless -H http://127.0.0.1:8080 \\
        -u 50 -r 50 --run-time 30s

``NDXP_LOAD_MODE=health`` makes every user hit ``GET /healthz`` instead: the
gateway's HTTP baseline without Kafka, for comparison in the same run.
"""

from __future__ import annotations

import os
import random
from typing import Any

from locust import FastHttpUser, constant, task

from adapters import synthetic

MODE = os.environ.get("NDXP_LOAD_MODE", "exchange")


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


class Agency(FastHttpUser):
    """An agency system calling the gateway back to back."""

    wait_time = constant(0)
    rng = random.Random(7)  # synthetic identifiers, not secrets

    @task
    def call(self) -> None:
        if MODE == "health":
            self.client.get("/healthz", name="healthz")
            return
        _, key, service, make = self.rng.choices(MIX, weights=[m[0] for m in MIX])[0]
        with self.client.post(
            f"/v1/exchange/{service}",
            json=make(self.rng),
            headers={"Authorization": f"Bearer {key}"},
            name=service,
            catch_response=True,
        ) as resp:
            # The provider's own not-found is a correct answer, not a failure.
            if resp.status_code in (200, 404):
                resp.success()
            else:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
