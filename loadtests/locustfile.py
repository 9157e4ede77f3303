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

from locust import FastHttpUser, constant, task

from loadtests.mix import MIX

MODE = os.environ.get("NDXP_LOAD_MODE", "exchange")


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
