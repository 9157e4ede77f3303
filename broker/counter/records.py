"""The transaction record of one exchange, as written to ``ndxp.tx``.

Like X-Road's operational monitoring record: who called what, with which
outcome, when each step happened, how big it was, on which gateway. Times
are epoch milliseconds; a step never reached is ``None``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(slots=True, kw_only=True)
class TxRecord:
    """One exchange, whatever its outcome."""

    exchange_id: str
    """Assigned by the gateway (UUIDv7): the one key the counter dedupes on."""
    client: str
    provider: str
    service: str
    outcome: str
    """``ok``, an error code of the public contract, or ``business_error``."""
    status: int
    t_in: float
    t_sent: float | None = None
    t_reply: float | None = None
    t_out: float | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    gateway: str = ""
    request_id: str | None = None
    """The caller's ``X-Request-Id``: recorded for correlation, never a key."""
    user_id: str | None = None
    purpose: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses natively

    @classmethod
    def decode(cls, raw: bytes) -> TxRecord:
        """Parse a record; ``ValueError`` if it is not one."""
        try:
            data: dict[str, Any] = orjson.loads(raw)
            return cls(**data)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"not a transaction record: {exc}") from exc


def day_of(t_ms: float, utc_offset_hours: int) -> str:
    """The calendar day (YYYY-MM-DD) of an epoch-ms time in the given UTC offset."""
    tz = dt.timezone(dt.timedelta(hours=utc_offset_hours))
    return dt.datetime.fromtimestamp(t_ms / 1000, tz).date().isoformat()
