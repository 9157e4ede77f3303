"""What an agency's handler is given and may answer: the request, its changes, its errors.

A handler is ``async def handler(req: Request) -> answer``: it returns the
JSON-serialisable answer (checked against the service's response contract
by the gateway), or raises :class:`~broker.errors.BusinessError` for the
provider's own "no" (e.g. citizen not found), which passes through to the
caller with its status and problem body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from broker.errors import BusinessError
from broker.model.envelope import RequestMeta

__all__ = ["BusinessError", "Change", "Handler", "Request"]


@dataclass(frozen=True, slots=True)
class Change:
    """One change a write-effect service made to its provider's data, or an event it publishes."""

    key: str
    value: Any
    event: str | None = None
    """The event type (of the provider's catalog) when this is an event to publish."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """What a handler gets: the exchange metadata and the validated request body."""

    meta: RequestMeta
    body: Any
    changes: list[Change] | None = field(default=None, repr=False)
    """Present for write-effect services: the changes to commit with the reply."""

    def record_change(self, key: str, value: Any) -> None:
        """Record a change to the provider's data, committed atomically with the reply."""
        if self.changes is None:
            raise TypeError(f"{self.meta.service} is a lookup (effects: read); it cannot change data")
        self.changes.append(Change(key, value))

    def publish_event(self, type_: str, key: str, data: Any) -> None:
        """Publish an event of the provider's ``type_`` (``ndxp.events.<provider>.<type>``), keyed by
        ``key``, in the same Kafka transaction as the reply: it exists if and only if the change does."""
        if self.changes is None:
            raise TypeError(f"{self.meta.service} is a lookup (effects: read); it cannot publish events")
        self.changes.append(Change(key, data, event=type_))


Handler = Callable[[Request], Awaitable[Any]]
"""A service handler: returns the JSON-serialisable answer, or raises BusinessError."""
