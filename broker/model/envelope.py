"""The exchange envelope: Kafka topic names and header names, metadata in and out.

Payload bytes travel unchanged in the Kafka value; everything else travels
in headers. Requests carry the exchange id, client, reply-to, deadline,
user id, purpose and W3C traceparent; replies carry the exchange id, the
HTTP status the provider chose and an outcome.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

H_EXCHANGE_ID = "ndxp-exchange-id"
H_REQUEST_ID = "ndxp-request-id"
"""The caller's ``X-Request-Id``: a correlation label, never a key."""
H_CLIENT = "ndxp-client"
H_PROVIDER = "ndxp-provider"
H_SERVICE = "ndxp-service"
H_VERSION = "ndxp-version"
"""The service version the caller is served (``MAJOR`` or ``MAJOR.MINOR``): a handler may serve several."""
H_REPLY_TO = "ndxp-reply-to"
H_REPLY_PARTITION = "ndxp-reply-partition"
"""The partition of ``reply_to`` the reply goes to, when the gateway chose one (stored exchanges)."""
H_DEADLINE = "ndxp-deadline-ms"
H_USER_ID = "ndxp-user-id"
H_PURPOSE = "ndxp-purpose"
H_TRACEPARENT = "traceparent"
H_STATUS = "ndxp-status"
H_OUTCOME = "ndxp-outcome"
H_ERROR = "ndxp-error"

Headers = list[tuple[str, bytes]]


class ReplyOutcome(enum.StrEnum):
    """What a provider's reply says about the exchange."""

    OK = "ok"
    BUSINESS_ERROR = "business_error"
    """The provider's own problem (e.g. citizen not found): passed through."""
    PROVIDER_ERROR = "provider_error"
    """The provider failed (handler crash, backend down)."""


H_HEARTBEAT = "ndxp-heartbeat"
"""On a message a gateway worker writes to its own reply topic now and then: "still here"."""


@dataclass(frozen=True, slots=True)
class Names:
    """Every Kafka topic and group name of one platform, under one prefix (``NDXP_TOPIC_PREFIX``).

    Two platforms (or a test run and the real platform) on one cluster with
    different prefixes share no topic and no consumer group.
    """

    prefix: str = "ndxp"

    def requests(self, provider: str, *, write: bool = False) -> str:
        """A provider's requests: one topic for its lookups, one for its writes, whatever the number of
        its services (the service is a header), so that what its adapter fetches does not grow with
        its catalog (decision 0012)."""
        return f"{self.prefix}.req.{provider}.{'writes' if write else 'lookups'}"

    @property
    def reply_prefix(self) -> str:
        """Every gateway worker's reply topic starts so (the keeper sweeps idle ones)."""
        return f"{self.prefix}.reply."

    def reply(self, instance: str) -> str:
        return f"{self.reply_prefix}{instance}"

    def dlq(self, provider: str) -> str:
        return f"{self.prefix}.dlq.{provider}"

    def data(self, provider: str) -> str:
        """The provider's changes made by write-effect services (written in their transaction)."""
        return f"{self.prefix}.data.{provider}"

    def adapter_group(self, provider: str) -> str:
        """The consumer group of a provider's adapters (also the stem of their transactional ids)."""
        return f"{self.prefix}.adapter.{provider}"

    def events(self, provider: str, type_: str) -> str:
        return f"{self.prefix}.events.{provider}.{type_}"

    def subscriber_group(self, client: str, provider: str, type_: str) -> str:
        """A subscriber's own durable position: one consumer group per client and event type."""
        return f"{self.prefix}.events.sub.{client}.{provider}.{type_}"


EXCHANGE_ID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
"""An exchange id as the gateway writes it (what ``GET /v1/exchanges/{exchange_id}`` looks up)."""


def new_exchange_id() -> str:
    """A fresh exchange id: a UUIDv7 (RFC 9562), time-ordered, 74 random bits.

    Only the gateway calls this; no caller-chosen value ever becomes an exchange id.
    """
    rand = int.from_bytes(os.urandom(10))
    value = (time.time_ns() // 1_000_000) << 80 | rand & _RAND_MASK | _VERSION_VARIANT
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# UUIDv7 layout: 48-bit ms time | version 0b0111 | 12 random | variant 0b10 | 62 random.
_RAND_MASK = ((1 << 80) - 1) & ~(0xF << 76) & ~(0x3 << 62)
_VERSION_VARIANT = 0x7 << 76 | 0x2 << 62


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestMeta:
    """Metadata of one exchange request, as carried in Kafka headers."""

    exchange_id: str
    client: str
    provider: str
    service: str
    reply_to: str
    deadline_ms: int
    request_id: str | None = None
    user_id: str | None = None
    purpose: str | None = None
    traceparent: str | None = None
    reply_partition: int | None = None
    version: str | None = None
    """The service version the gateway validated the request against."""

    def headers(self) -> Headers:
        h: Headers = [
            (H_EXCHANGE_ID, self.exchange_id.encode()),
            (H_CLIENT, self.client.encode()),
            (H_PROVIDER, self.provider.encode()),
            (H_SERVICE, self.service.encode()),
            (H_REPLY_TO, self.reply_to.encode()),
            (H_DEADLINE, str(self.deadline_ms).encode()),
        ]
        if self.request_id is not None:
            h.append((H_REQUEST_ID, self.request_id.encode()))
        if self.user_id is not None:
            h.append((H_USER_ID, self.user_id.encode()))
        if self.purpose is not None:
            h.append((H_PURPOSE, self.purpose.encode()))
        if self.traceparent is not None:
            h.append((H_TRACEPARENT, self.traceparent.encode()))
        if self.reply_partition is not None:
            h.append((H_REPLY_PARTITION, str(self.reply_partition).encode()))
        if self.version is not None:
            h.append((H_VERSION, self.version.encode()))
        return h

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes | None]]) -> RequestMeta:
        """Parse request headers; ``ValueError`` when one is missing, null or not UTF-8 text."""
        h = _texts(headers)
        try:
            return cls(
                exchange_id=h[H_EXCHANGE_ID],
                client=h[H_CLIENT],
                provider=h[H_PROVIDER],
                service=h[H_SERVICE],
                reply_to=h[H_REPLY_TO],
                deadline_ms=int(h[H_DEADLINE]),
                request_id=h.get(H_REQUEST_ID),
                user_id=h.get(H_USER_ID),
                purpose=h.get(H_PURPOSE),
                traceparent=h.get(H_TRACEPARENT),
                reply_partition=int(h[H_REPLY_PARTITION]) if H_REPLY_PARTITION in h else None,
                version=h.get(H_VERSION),
            )
        except KeyError as exc:
            raise ValueError(f"missing header {exc.args[0]}") from exc

    def expired(self, at_ms: int | None = None) -> bool:
        return (now_ms() if at_ms is None else at_ms) >= self.deadline_ms


H_ORIGIN = "ndxp-origin"
"""On a reply from a member's own adapter: HMAC-SHA256 of the reply by its provider's reply secret."""


def reply_mac(secret: bytes, exchange_id: str, status: int, outcome: str, body: bytes) -> str:
    """The proof that the provider holding ``secret`` sent this reply (nobody else can make it)."""
    message = f"{exchange_id}\0{status}\0{outcome}\0".encode() + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def from_provider(reply: Reply, headers: Iterable[tuple[str, bytes | None]], secret: bytes) -> bool:
    """Whether ``reply`` carries a valid proof by the provider whose reply secret is ``secret``."""
    sent = next((v for k, v in headers if k == H_ORIGIN), None)
    if sent is None:
        return False
    want = reply_mac(secret, reply.exchange_id, reply.status, reply.outcome.value, reply.body)
    return hmac.compare_digest(sent, want.encode())


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A provider's reply: HTTP status, outcome and body bytes (unchanged)."""

    exchange_id: str
    status: int
    outcome: ReplyOutcome
    body: bytes

    def headers(self) -> Headers:
        return [
            (H_EXCHANGE_ID, self.exchange_id.encode()),
            (H_STATUS, str(self.status).encode()),
            (H_OUTCOME, self.outcome.value.encode()),
        ]

    @classmethod
    def from_message(cls, headers: Iterable[tuple[str, bytes | None]], body: bytes) -> Reply:
        """Parse a reply; ``ValueError`` when a header is missing, null, not text or out of range."""
        mine = (H_EXCHANGE_ID, H_STATUS, H_OUTCOME)  # others (a trace, a partition) are not ours to judge
        try:
            h = _texts((k, v) for k, v in headers if k in mine)
            return cls(
                exchange_id=h[H_EXCHANGE_ID],
                status=int(h[H_STATUS]),
                outcome=ReplyOutcome(h[H_OUTCOME]),
                body=body,
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"malformed reply headers: {exc}") from exc


def _texts(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    """Kafka headers as text; ``ValueError`` on a null or non-UTF-8 value (hostile or broken senders)."""
    h: dict[str, str] = {}
    for k, v in headers:
        if v is None:
            raise ValueError(f"header {k} has no value")
        try:
            h[k] = v.decode()
        except UnicodeDecodeError as exc:
            raise ValueError(f"header {k} is not UTF-8 text: {exc}") from exc
    return h
