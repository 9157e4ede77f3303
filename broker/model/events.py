"""Data-change events: their topics, their envelope, and the positions a subscriber resumes from.

A provider publishes an event of a type in its catalog
(``schemas/<provider>/events/<type>.json``), through the gateway
(``POST /v1/events/{provider}/{type}``) or from a write-effect service, in
the same Kafka transaction as its answer. Events of a type live on
``ndxp.events.<provider>.<type>``, keyed by the type's ``x-ndxp-key`` (a
citizen's CCCD, a business's code), so that one subject's events stay in
order. The value is the envelope: ``event_id`` (UUIDv7), ``type``,
``producer``, ``time`` (RFC 3339), ``key``, ``data``, and when given
``user_id``, ``purpose`` and the ``exchange_id`` that caused it.

A subscriber's position is one offset per partition. Server-Sent Events
carry it as the event's ``id`` (``0:17,1:4,2:9,3:0``: the next offset of each
partition after this event), so that ``Last-Event-ID`` resumes exactly after
the last event the subscriber saw, nothing twice and nothing missed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from typing import Any

import orjson

from broker.model.envelope import new_exchange_id
from broker.model.records import Mode, Outcome, TxRecord

POSITIONS_PATTERN = r"^[0-9]{1,4}:[0-9]{1,19}(,[0-9]{1,4}:[0-9]{1,19}){0,255}$"
"""A stream position (an SSE event id, ``Last-Event-ID``): next offset per partition."""
_POSITIONS = re.compile(POSITIONS_PATTERN)


def rfc3339(t_ms: float) -> str:
    return dt.datetime.fromtimestamp(t_ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def parse_time(raw: str) -> float:
    """An RFC 3339 time as epoch milliseconds; ``ValueError`` if it is not one (an offset is required)."""
    when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("an RFC 3339 time has a UTC offset (e.g. Z or +07:00)")
    t_ms = when.timestamp() * 1000
    if t_ms < 0:
        raise ValueError("a time before 1970 holds no event")
    return t_ms


def envelope(
    *,
    provider: str,
    type_: str,
    key: str,
    data: Any,
    user_id: str | None = None,
    purpose: str | None = None,
    exchange_id: str | None = None,
    event_id: str | None = None,
) -> tuple[str, bytes, float]:
    """A new event's id, its encoded envelope, and its time (epoch ms)."""
    t_ms = time.time() * 1000
    eid = event_id or new_exchange_id()
    doc: dict[str, Any] = {
        "event_id": eid,
        "type": f"{provider}/{type_}",
        "producer": provider,
        "time": rfc3339(t_ms),
        "key": key,
        "data": data,
    }
    extra = {"user_id": user_id, "purpose": purpose, "exchange_id": exchange_id}
    doc.update({name: value for name, value in extra.items() if value is not None})
    return eid, orjson.dumps(doc), t_ms


def published_record(event_id: str, provider: str, type_: str, t_ms: float, body: bytes) -> TxRecord:
    """The transaction record of a publication: counted exactly once, like an exchange (mode ``event``),
    with the body's SHA-256 for the exchange log."""
    return TxRecord(
        exchange_id=event_id, client=provider, provider=provider, service=type_, outcome=Outcome.PUBLISHED,
        status=202, t_in=t_ms, t_out=t_ms, request_bytes=len(body), mode=Mode.EVENT,
        request_sha256=hashlib.sha256(body).hexdigest(),
    )  # fmt: skip


def delivered_record(subscriber: str, provider: str, type_: str, n: int, t_ms: float) -> TxRecord:
    """``n`` events streamed to a subscriber (mode ``delivery``; resent events count again)."""
    return TxRecord(
        exchange_id=new_exchange_id(), client=subscriber, provider=provider, service=type_,
        outcome=Outcome.DELIVERED, status=200, t_in=t_ms, t_out=t_ms, count=n, mode=Mode.DELIVERY,
    )  # fmt: skip


def encode_positions(positions: dict[int, int]) -> str:
    return ",".join(f"{p}:{o}" for p, o in sorted(positions.items()))


def decode_positions(raw: str) -> dict[int, int]:
    """A ``Last-Event-ID``; ``ValueError`` if it is not one of ours."""
    if not _POSITIONS.match(raw):
        raise ValueError("Last-Event-ID is not an event id of this stream")
    return {int(p): int(o) for p, o in (pair.split(":") for pair in raw.split(","))}


def sse_control(kind: str, detail: str) -> bytes:
    """The last event of a stream the platform ends (``revoked``, ``reauthenticate``): no id, so a
    reconnecting client resumes after the last data event it got."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"detail": detail}) + b"\n\n"


def sse(event_id: str, type_: str, data: bytes) -> bytes:
    """One Server-Sent Event (``data`` is one line of compact JSON)."""
    return b"id: " + event_id.encode() + b"\nevent: " + type_.encode() + b"\ndata: " + data + b"\n\n"
