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
    count: int = 1
    """Exchanges this record stands for: 1, or more for the gateway's tally of
    unauthenticated rejections (one record a second, not one per failed login)."""

    mode: str = "sync"
    """``sync``, or ``async`` for an exchange accepted with ``Prefer: respond-async``; ``event`` for an
    event published (client = provider = publisher, service = event type), ``delivery`` for ``count``
    events streamed to a subscriber (client)."""

    def count_fields(self) -> tuple[str, str, str, str]:
        """What a count row is keyed by, besides the day and the mode."""
        return (self.client, self.provider, self.service, self.outcome)

    def encode(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses natively

    @classmethod
    def decode(cls, raw: bytes) -> TxRecord:
        """Parse and check a record; ``ValueError`` if it is not one (wrong fields or types)."""
        try:
            data: dict[str, Any] = orjson.loads(raw)
            rec = cls(**data)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"not a transaction record: {exc}") from exc
        for name, kinds in _TYPES.items():
            value = getattr(rec, name)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise ValueError(f"not a transaction record: {name} is {type(value).__name__}")
        if not 1 <= rec.count <= 10_000_000:
            raise ValueError(f"not a transaction record: count {rec.count}")
        if any("|" in v for v in (rec.count_fields())):
            raise ValueError("not a transaction record: '|' in a counted name")
        if rec.mode not in MODES:
            raise ValueError(f"not a transaction record: mode {rec.mode!r}")
        if not rec.t_in == rec.t_in or abs(rec.t_in) > 1e15:  # NaN or absurd times
            raise ValueError("not a transaction record: t_in is not a time")
        return rec


MODES = frozenset({"sync", "async", "event", "delivery"})
EXCHANGE_MODES = frozenset({"sync", "async"})
_NUMBER = (int, float)
_TEXT_OR_NONE = (str, type(None))
_NUMBER_OR_NONE = (int, float, type(None))
_TYPES: dict[str, tuple[type, ...]] = {
    "exchange_id": (str,),
    "client": (str,),
    "provider": (str,),
    "service": (str,),
    "outcome": (str,),
    "status": (int,),
    "t_in": _NUMBER,
    "t_sent": _NUMBER_OR_NONE,
    "t_reply": _NUMBER_OR_NONE,
    "t_out": _NUMBER_OR_NONE,
    "request_bytes": (int,),
    "response_bytes": (int,),
    "gateway": (str,),
    "request_id": _TEXT_OR_NONE,
    "user_id": _TEXT_OR_NONE,
    "purpose": _TEXT_OR_NONE,
    "count": (int,),
    "mode": (str,),
}


def day_of(t_ms: float, utc_offset_hours: int) -> str:
    """The calendar day (YYYY-MM-DD) of an epoch-ms time in the given UTC offset."""
    tz = dt.timezone(dt.timedelta(hours=utc_offset_hours))
    return dt.datetime.fromtimestamp(t_ms / 1000, tz).date().isoformat()
