"""Callbacks of async exchanges: how one is signed, and what follows an attempt. No I/O here.

A callback is the exchange's public status document, POSTed to the URL the
registry holds for the caller, signed with HMAC-SHA256 over
``<timestamp>.<body>``. After each attempt, :func:`after_attempt` says what
the exchange's callback state becomes: delivered, failed for good (then
dead-lettered), or pending again after an exponential backoff with equal
jitter.
"""

from __future__ import annotations

import hmac
import random
from typing import Any

from broker.model.documents import CallbackState

MAX_BACKOFF_S = 600.0


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``X-NDXP-Signature``: ``sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, "sha256").hexdigest()


def headers(
    exchange_id: str, secrets: bytes | tuple[bytes, ...], timestamp: str, body: bytes, attempt: int
) -> dict[str, str]:
    """The headers of one delivery attempt: one signature per secret the agency holds (the new one
    first, then the one it rotates away from), comma-separated, so a secret rotates without a gap."""
    secrets = (secrets,) if isinstance(secrets, bytes) else secrets
    return {
        "Content-Type": "application/json",
        "X-NDXP-Exchange-Id": exchange_id,
        "X-NDXP-Timestamp": timestamp,
        "X-NDXP-Signature": ", ".join(sign(secret, timestamp, body) for secret in secrets),
        "X-NDXP-Delivery-Attempt": str(attempt),
    }


def backoff_s(attempts: int, first_s: float, jitter: float) -> float:
    """The wait before the next attempt: ``first_s`` doubling per attempt (at most 10 min), with equal
    jitter (``jitter`` in [0, 1): half the delay fixed, half random)."""
    delay = min(MAX_BACKOFF_S, first_s * 2.0 ** (attempts - 1))
    return delay / 2 + jitter * delay / 2


def after_attempt(
    attempts: int, error: str | None, *, max_attempts: int, first_backoff_s: float, now_ms: float,
    jitter: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The callback state after attempt number ``attempts`` ended with ``error`` (None: delivered)."""
    if error is None:
        return {"state": CallbackState.DELIVERED, "attempts": attempts}
    if attempts >= max_attempts:
        return {"state": CallbackState.FAILED, "attempts": attempts, "error": error}
    if jitter is None:
        jitter = random.random()  # noqa: S311 - spreading retries, not a secret
    wait = backoff_s(attempts, first_backoff_s, jitter)
    return {
        "state": CallbackState.PENDING,
        "attempts": attempts,
        "error": error,
        "next_at": now_ms + wait * 1000,
    }
