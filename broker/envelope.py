"""The exchange envelope: Kafka topic names and header names, metadata in and out.

Payload bytes travel unchanged in the Kafka value; everything else travels
in headers. Requests carry the exchange id, client, reply-to, deadline,
user id, purpose and W3C traceparent; replies carry the exchange id, the
HTTP status the provider chose and an outcome.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass

H_EXCHANGE_ID = "ndxp-exchange-id"
H_CLIENT = "ndxp-client"
H_PROVIDER = "ndxp-provider"
H_SERVICE = "ndxp-service"
H_REPLY_TO = "ndxp-reply-to"
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


def request_topic(provider: str, service: str) -> str:
    return f"ndxp.req.{provider}.{service}"


def reply_topic(instance: str) -> str:
    return f"ndxp.reply.{instance}"


def dlq_topic(provider: str) -> str:
    return f"ndxp.dlq.{provider}"


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
    user_id: str | None = None
    purpose: str | None = None
    traceparent: str | None = None

    def headers(self) -> Headers:
        h: Headers = [
            (H_EXCHANGE_ID, self.exchange_id.encode()),
            (H_CLIENT, self.client.encode()),
            (H_PROVIDER, self.provider.encode()),
            (H_SERVICE, self.service.encode()),
            (H_REPLY_TO, self.reply_to.encode()),
            (H_DEADLINE, str(self.deadline_ms).encode()),
        ]
        if self.user_id is not None:
            h.append((H_USER_ID, self.user_id.encode()))
        if self.purpose is not None:
            h.append((H_PURPOSE, self.purpose.encode()))
        if self.traceparent is not None:
            h.append((H_TRACEPARENT, self.traceparent.encode()))
        return h

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes]]) -> RequestMeta:
        """Parse request headers; raises ``ValueError`` when a required one is missing."""
        h = {k: v.decode() for k, v in headers}
        try:
            return cls(
                exchange_id=h[H_EXCHANGE_ID],
                client=h[H_CLIENT],
                provider=h[H_PROVIDER],
                service=h[H_SERVICE],
                reply_to=h[H_REPLY_TO],
                deadline_ms=int(h[H_DEADLINE]),
                user_id=h.get(H_USER_ID),
                purpose=h.get(H_PURPOSE),
                traceparent=h.get(H_TRACEPARENT),
            )
        except KeyError as exc:
            raise ValueError(f"missing header {exc.args[0]}") from exc

    def expired(self, at_ms: int | None = None) -> bool:
        return (now_ms() if at_ms is None else at_ms) >= self.deadline_ms


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
    def from_message(cls, headers: Iterable[tuple[str, bytes]], body: bytes) -> Reply:
        h = {k: v for k, v in headers}
        try:
            return cls(
                exchange_id=h[H_EXCHANGE_ID].decode(),
                status=int(h[H_STATUS]),
                outcome=ReplyOutcome(h[H_OUTCOME].decode()),
                body=body,
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"malformed reply headers: {exc}") from exc
