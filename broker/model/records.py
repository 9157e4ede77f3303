"""The transaction record of one exchange, as written to ``ndxp.tx``.

Like X-Road's operational monitoring record: who called what, with which
outcome, when each step happened, how big it was, on which gateway. Times
are epoch milliseconds; a step never reached is ``None``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import hashlib
import hmac
import uuid
from dataclasses import dataclass

import msgspec
import orjson


class Mode(enum.StrEnum):
    """What a transaction record stands for."""

    SYNC = "sync"
    """An exchange answered in its HTTP call."""
    ASYNC = "async"
    """An exchange accepted with ``Prefer: respond-async``; its result read or called back later."""
    EVENT = "event"
    """An event published (client = provider = publisher, service = event type)."""
    DELIVERY = "delivery"
    """``count`` events streamed to a subscriber (client)."""


class Outcome(enum.StrEnum):
    """How an exchange ended, as counted: success, the provider's own "no", or an error code.

    The error codes are those of the public contract (``broker.errors``); a test
    checks that every error class's ``code`` is a member.
    """

    OK = "ok"
    BUSINESS_ERROR = "business_error"
    """The provider's own answer that is not a success (e.g. citizen not found): passed through."""
    ACCEPTED = "accepted"
    """An async exchange accepted (202): its end is recorded by the keeper."""
    REPLAYED = "replayed"
    """Answered from an earlier exchange with the same Idempotency-Key: no new exchange."""
    PUBLISHED = "published"
    DELIVERED = "delivered"
    INTERNAL_ERROR = "internal_error"
    UNAUTHORIZED = "unauthorized"
    ACCESS_DENIED = "access_denied"
    UNKNOWN_SERVICE = "unknown_service"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    INVALID_REQUEST = "invalid_request"
    INVALID_HEADER = "invalid_header"
    REQUEST_TIMEOUT = "request_timeout"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    PROVIDER_ERROR = "provider_error"
    INVALID_RESPONSE = "invalid_response"
    UNAVAILABLE = "unavailable"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_KEY_IN_FLIGHT = "idempotency_key_in_flight"
    CLIENT_CLOSED = "client_closed"
    CONFLICT = "conflict"
    """The management API's (a stale If-Match); no exchange ends so."""


ANSWERED = frozenset({Outcome.OK, Outcome.BUSINESS_ERROR, Outcome.ACCEPTED, Outcome.REPLAYED})
"""Outcomes where the caller got what it asked for (the provider's "no" included)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TxRecord:
    """One exchange, whatever its outcome."""

    exchange_id: str
    """Assigned by the gateway (UUIDv7): the one key the counter dedupes on."""
    client: str
    provider: str
    service: str
    outcome: str
    """An :class:`Outcome` (kept as text: a record from a newer gateway may carry a code this one lacks)."""
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

    mode: Mode = Mode.SYNC
    request_sha256: str | None = None
    """Hex SHA-256 of the request body (the exchange log holds this, never the body)."""
    response_sha256: str | None = None
    """Hex SHA-256 of the response body."""
    subject: str | None = None
    """HMAC-SHA-256 (the platform's subject secret) of the person the request is about (``x-ndxp-subject``),
    hex: what the data tracker indexes. Never the identifier itself."""

    def count_fields(self) -> tuple[str, str, str, str]:
        """What a count row is keyed by, besides the day and the mode."""
        return (self.client, self.provider, self.service, self.outcome)

    def encode(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses natively

    @classmethod
    def decode(cls, raw: bytes) -> TxRecord:
        """Parse and check a record; ``ValueError`` if it is not one (wrong fields or types).

        msgspec checks every field's type against the annotations (no bool for an int, no text for a
        time, a known mode); what types cannot say is checked after.
        """
        try:
            rec = _DECODER.decode(raw)
        except msgspec.ValidationError as exc:
            raise ValueError(f"not a transaction record: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a transaction record: {exc}") from exc
        if not 1 <= rec.count <= 10_000_000:
            raise ValueError(f"not a transaction record: count {rec.count}")
        if any("|" in v for v in (rec.count_fields())):
            raise ValueError("not a transaction record: '|' in a counted name")
        if abs(rec.t_in) > 1e15:  # absurd times
            raise ValueError("not a transaction record: t_in is not a time")
        return rec


_DECODER = msgspec.json.Decoder(TxRecord)
MODES = frozenset(Mode)
EXCHANGE_MODES = frozenset({Mode.SYNC, Mode.ASYNC})


def id_key(exchange_id: str) -> bytes:
    """An exchange id as 16 bytes for a dedupe set: a UUID's own bytes (the gateway's ids), else a
    16-byte BLAKE2b digest (a record written by something else)."""
    if len(exchange_id) == 36:
        e = exchange_id
        if e[8] == e[13] == e[18] == e[23] == "-":  # the canonical form: 5x faster than uuid.UUID
            with contextlib.suppress(ValueError):
                key = bytes.fromhex(e.replace("-", ""))
                if len(key) == 16:  # (fromhex skips whitespace; uuid.UUID decides those below)
                    return key
        with contextlib.suppress(ValueError):
            return uuid.UUID(exchange_id).bytes
    return hashlib.blake2b(exchange_id.encode(errors="surrogatepass"), digest_size=16).digest()


def subject_key(secret: str, subject_id: str) -> str:
    """The data tracker's key of a person: hex HMAC-SHA-256 of their identifier under the platform secret
    (identifiers such as CCCDs are too few to hash without a secret)."""
    return hmac.new(secret.encode(), subject_id.encode(), hashlib.sha256).hexdigest()


def day_of(t_ms: float, utc_offset_hours: int) -> str:
    """The calendar day (YYYY-MM-DD) of an epoch-ms time in the given UTC offset."""
    tz = dt.timezone(dt.timedelta(hours=utc_offset_hours))
    return dt.datetime.fromtimestamp(t_ms / 1000, tz).date().isoformat()
