"""Locust load test of the exchange path: a realistic mix of demo services.

Run against a platform started by `scripts/ndxp up --load-test-limits`
(loopback only), bounded in users and time, e.g.::

    .venv/bin/locust -f loadtests/locustfile.py --headless -H http://127.0.0.1:8080 \\
        -u 50 -r 50 --run-time 30s

``--load-test-limits`` raises every demo client's rate limit 1000-fold, as
``bench.py`` does: without it the mix sends ``vcb`` 30% of the calls, over
its own 100/s, and a 429 is the client's limit doing its job. Such failures
are reported apart, as "429 rate_limited: the client's own limit", so that
every other failure reads as the platform's.

``NDXP_LOAD_MODE=health`` makes every user hit ``GET /healthz`` instead: the
gateway's HTTP baseline without Kafka, for comparison in the same run.
``NDXP_LOAD_MODE=async`` sends the same mix as async exchanges: submit with
``Prefer: respond-async`` (202), then long-poll ``GET /v1/exchanges/{id}``
with ``Prefer: wait=30`` until it is finished (at most 20 polls).
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, constant, task

from loadtests.mix import MIX

MODE = os.environ.get("NDXP_LOAD_MODE", "exchange")
RATE_LIMITED = "429 rate_limited: the client's own limit (start the platform with --load-test-limits)"


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
        if MODE == "async":
            self.call_async(key, service, make(self.rng))
            return
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
            elif resp.status_code == 429:
                resp.failure(RATE_LIMITED)
            else:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")

    def call_async(self, key: str, service: str, body: object) -> None:
        auth = {"Authorization": f"Bearer {key}"}
        with self.client.post(
            f"/v1/exchange/{service}",
            json=body,
            headers={**auth, "Prefer": "respond-async"},
            name=f"{service} (submit)",
            catch_response=True,
        ) as resp:
            if resp.status_code != 202:
                limited = resp.status_code == 429
                resp.failure(RATE_LIMITED if limited else f"{resp.status_code}: {resp.text[:200]}")
                return
            resp.success()
            location = resp.headers["Location"]
        for _ in range(20):
            with self.client.get(
                location, headers={**auth, "Prefer": "wait=30"}, name="exchanges/{id}", catch_response=True
            ) as poll:
                doc = poll.json() if poll.status_code == 200 else {}
                if doc.get("status") == "pending":
                    poll.success()
                    continue
                if doc.get("http_status") in (200, 404):
                    poll.success()
                else:
                    poll.failure(f"{poll.status_code}: {poll.text[:200]}")
                return
