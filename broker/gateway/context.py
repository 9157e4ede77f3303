"""The Exchange: one exchange as it passes the gateway's pipeline.

It carries what the steps learn (who calls, which service, in which mode,
the body), when each step happened, how it ended, and who writes its
transaction record. The record is made from it once, at the end
(:meth:`Exchange.record`): nothing else builds or changes a record on the
way.
"""

from __future__ import annotations

import enum
import hashlib
import time
from dataclasses import dataclass, field

from broker.contracts.catalog import Service
from broker.contracts.registry import Agency
from broker.model.envelope import RequestMeta
from broker.model.records import Mode, Outcome, TxRecord

UNKNOWN = "-"
"""Client, provider or service of an exchange that never got that far (e.g. no valid key)."""


class RecordedBy(enum.StrEnum):
    """Who writes an exchange's transaction record."""

    GATEWAY = "gateway"
    """This worker, before it answers (the answer waits for Kafka's acknowledgement)."""
    TALLY = "tally"
    """This worker's tally of unauthenticated rejections: one record per kind a second."""
    KEEPER = "keeper"
    """The keeper, when the stored exchange ends (async, idempotent): the gateway writes none."""
    NOBODY = "nobody"
    """No new exchange: an idempotent replay answers an earlier one again."""


def _now_ms() -> float:
    return time.time() * 1000


@dataclass(slots=True, kw_only=True)
class Exchange:
    """One exchange in the pipeline (see the module docstring)."""

    id: str
    """Assigned by the gateway (UUIDv7), never by the caller."""
    gateway: str
    """This worker's reply topic."""
    t_in: float = field(default_factory=_now_ms)
    started: float = field(default_factory=time.perf_counter)
    request_id: str | None = None
    user_id: str | None = None
    purpose: str | None = None
    traceparent: str | None = None
    agency: Agency | None = None
    svc: Service | None = None
    """The service, once the path names one the catalog has (rights still unchecked)."""
    mode: Mode = Mode.SYNC
    body: bytes = b""
    t_sent: float | None = None
    t_reply: float | None = None
    outcome: str = Outcome.INTERNAL_ERROR
    subject: str | None = None
    """The keyed hash of the person the request is about (the data tracker), once the body is read."""
    recorded_by: RecordedBy = RecordedBy.GATEWAY

    @property
    def client(self) -> str:
        return self.agency.id if self.agency is not None else UNKNOWN

    @property
    def provider(self) -> str:
        return self.svc.provider if self.svc is not None else UNKNOWN

    @property
    def service(self) -> str:
        return self.svc.service if self.svc is not None else UNKNOWN

    def sent(self) -> None:
        """The request is in Kafka (acknowledged): the provider may now act on it."""
        self.t_sent = _now_ms()

    def replied(self) -> None:
        self.t_reply = _now_ms()

    def meta(self, *, reply_to: str, deadline_ms: int, reply_partition: int | None = None) -> RequestMeta:
        """What travels to the provider in Kafka headers."""
        assert self.svc is not None, "no service yet"
        return RequestMeta(
            exchange_id=self.id,
            client=self.client,
            provider=self.svc.provider,
            service=self.svc.service,
            reply_to=reply_to,
            reply_partition=reply_partition,
            deadline_ms=deadline_ms,
            request_id=self.request_id,
            user_id=self.user_id,
            purpose=self.purpose,
            traceparent=self.traceparent,
            version=self.svc.version,
        )

    def record(self, *, status: int, response: bytes) -> TxRecord:
        """The transaction record of this exchange, as it ends now (with its bodies' hashes, not them)."""
        return TxRecord(
            exchange_id=self.id,
            client=self.client,
            provider=self.provider,
            service=self.service,
            outcome=self.outcome,
            status=status,
            t_in=self.t_in,
            t_sent=self.t_sent,
            t_reply=self.t_reply,
            t_out=_now_ms(),
            request_bytes=len(self.body),
            response_bytes=len(response),
            gateway=self.gateway,
            request_id=self.request_id,
            user_id=self.user_id,
            purpose=self.purpose,
            mode=self.mode,
            request_sha256=hashlib.sha256(self.body).hexdigest(),
            response_sha256=hashlib.sha256(response).hexdigest(),
            subject=self.subject,
        )
