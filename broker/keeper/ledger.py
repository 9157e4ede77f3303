"""What the keeper knows of its partitions' stored exchanges, and what is due: no I/O here.

The keeper (``broker.keeper.keeper``) feeds the ledger every record of the
exchanges topic in log order (:meth:`Ledger.apply`), tells it when
partitions are assigned or revoked and how far it has read, and asks it what
to do now (:meth:`Ledger.due`) and which offsets it may commit
(:meth:`Ledger.offsets`). Every decision lives here, as plain code that the
unit tests drive record by record.

The rules:

- a pending document opens the exchange, unless it is a claim that lost its
  idempotency key (the first claim in the log wins, ``Claims``) or a
  document seen before;
- the adapter's first reply to an open exchange is kept; a second is not;
- a final document closes the exchange, or keeps it open while its callback
  is still due;
- nothing is done for a partition until it has been read up to the end it
  had when it was assigned (``catching_up``): the final documents already
  written are seen first, so nothing is finished twice;
- an exchange is due when its reply came, or when its deadline plus
  ``GRACE_MS`` passed without one; a callback when its ``next_at`` comes;
- offsets are never committed past the first document of an exchange still
  open: a keeper that restarts, or takes the partition over, reads it again.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from broker.model.documents import GRACE_MS, Claims, Final, Pending, decode, doc_kind
from broker.model.envelope import Reply, from_provider

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Open:
    """An exchange of one of our partitions that is not over yet."""

    first_offset: int
    pending: Pending | None = None
    reply: Reply | None = None
    final: Final | None = None
    """The latest final document, while its callback is still to deliver."""
    busy: bool = False
    """A write or a delivery for it is under way."""


@dataclass(frozen=True, slots=True, order=True)
class _Due:
    at_ms: float
    topic: str
    partition: int
    exchange_id: str


@dataclass(slots=True)
class Work:
    """What is due now: exchanges to finish (in one transaction), callbacks to deliver."""

    finish: list[tuple[TopicPartition, Open]] = field(default_factory=list)
    deliver: list[tuple[TopicPartition, Open]] = field(default_factory=list)


class Ledger:
    """The open exchanges of the keeper's partitions (see the module docstring)."""

    def __init__(
        self,
        secret_of: Callable[[str], bytes | None] = lambda _: None,
        on_forged: Callable[[str], None] = lambda _: None,
    ) -> None:
        """``secret_of``: a provider's reply secret (its own adapter signs its replies; None: the
        platform runs its adapter); ``on_forged``: told of a reply dropped for want of it."""
        self.secret_of = secret_of
        self.on_forged = on_forged
        self.open: dict[TopicPartition, dict[str, Open]] = {}
        self.catching_up: dict[TopicPartition, int] = {}
        """Partitions assigned and not yet read up to their end offset at assignment."""
        self.claims = Claims()
        self._due: list[_Due] = []
        self._replied: set[tuple[TopicPartition, str]] = set()
        self._last_read: dict[TopicPartition, int] = {}

    # -- partitions --------------------------------------------------------------

    def assigned(self, ends: Mapping[TopicPartition, int]) -> None:
        """Partitions given to us, with their end offsets now: read up to there before acting."""
        for tp, end in ends.items():
            self.open[tp] = {}
            self.catching_up[tp] = end

    def revoked(self, tps: Collection[TopicPartition]) -> None:
        """Partitions taken away: another keeper reads them again from their committed offsets."""
        for tp in tps:
            self.open.pop(tp, None)
            self.catching_up.pop(tp, None)
            self._last_read.pop(tp, None)
        self._replied = {(tp, eid) for tp, eid in self._replied if tp not in tps}

    def read_to(self, tp: TopicPartition, position: int) -> None:
        """The consumer's position on ``tp``: past its end at assignment, it is caught up."""
        end = self.catching_up.get(tp)
        if end is not None and position >= end:
            del self.catching_up[tp]
            for eid, o in self.open.get(tp, {}).items():  # act on what its log left open
                if o.reply is not None:
                    self._replied.add((tp, eid))
                if o.final is not None:
                    self._schedule(_next_at(o.final), tp, eid)

    # -- the log -------------------------------------------------------------------

    def apply(
        self, tp: TopicPartition, offset: int, headers: Sequence[tuple[str, bytes | None]], value: bytes
    ) -> None:
        """One record of ``tp``, in log order: a pending or final document, or an adapter's reply."""
        opens = self.open.setdefault(tp, {})
        self._last_read[tp] = offset
        if doc_kind(headers) is None:  # an adapter's reply
            try:
                reply = Reply.from_message(headers, value)
            except ValueError as exc:
                log.warning("keeper: ignoring a malformed message at %s@%s: %s", tp, offset, exc)
                return
            o = opens.get(reply.exchange_id)
            if o is not None and o.pending is not None and o.final is None and o.reply is None:
                secret = self.secret_of(o.pending.provider)
                if secret is not None and not from_provider(reply, headers, secret):
                    # Every provider may write to this topic: only the exchange's own provider answers.
                    log.warning("keeper: dropping a reply for %s's exchange %s without its signature",
                                o.pending.provider, reply.exchange_id)  # fmt: skip
                    self.on_forged(o.pending.provider)
                    return
                o.reply = reply
                self._replied.add((tp, reply.exchange_id))
            return
        try:
            doc = decode(value)
        except ValueError as exc:
            log.warning("keeper: ignoring a malformed document at %s@%s: %s", tp, offset, exc)
            return
        if isinstance(doc, Pending):
            if not self.claims.apply(doc) or doc.exchange_id in opens:
                return  # a claim that lost its key, or a document seen before
            opens[doc.exchange_id] = Open(first_offset=offset, pending=doc)
            self._schedule(doc.deadline_ms + GRACE_MS, tp, doc.exchange_id)
            return
        if not doc.callback_due:
            opens.pop(doc.exchange_id, None)  # over
            self._replied.discard((tp, doc.exchange_id))
            return
        o = opens.get(doc.exchange_id)
        if o is None:
            o = opens[doc.exchange_id] = Open(first_offset=offset)
        o.final, o.reply, o.busy = doc, None, False
        self._replied.discard((tp, doc.exchange_id))
        self._schedule(_next_at(doc), tp, doc.exchange_id)

    # -- what is due -----------------------------------------------------------------

    def due(self, now_ms: float) -> Work:
        """What to do now; each exchange handed out is marked busy until its next document is read
        (or :meth:`retry` gives it back)."""
        work = Work()
        for tp, eid in sorted(self._replied, key=lambda item: (item[0].topic, item[0].partition, item[1])):
            if tp in self.catching_up:
                continue
            self._replied.discard((tp, eid))
            o = self.open.get(tp, {}).get(eid)
            if o is not None and not o.busy and o.final is None and o.pending is not None:
                o.busy = True
                work.finish.append((tp, o))
        while self._due and self._due[0].at_ms <= now_ms:
            item = heapq.heappop(self._due)
            tp = TopicPartition(item.topic, item.partition)
            if tp in self.catching_up:
                continue  # scheduled again once caught up
            o = self.open.get(tp, {}).get(item.exchange_id)
            if o is None or o.busy:
                continue
            if o.final is not None and o.final.callback_due:
                o.busy = True
                work.deliver.append((tp, o))
            elif o.final is None and o.pending is not None and now_ms >= o.pending.deadline_ms + GRACE_MS:
                o.busy = True
                work.finish.append((tp, o))
        return work

    def retry(self, finished: Iterable[tuple[TopicPartition, Open]]) -> None:
        """Their transaction failed: due again at once."""
        for tp, o in finished:
            o.busy = False
            assert o.pending is not None
            if o.reply is not None:
                self._replied.add((tp, o.pending.exchange_id))
            else:
                self._schedule(0, tp, o.pending.exchange_id)

    def offsets(self) -> dict[TopicPartition, int]:
        """What may be committed: up to the first document of the oldest open exchange of each
        partition read so far (none for a partition still catching up)."""
        offsets: dict[TopicPartition, int] = {}
        for tp, opens in self.open.items():
            last = self._last_read.get(tp)
            if tp in self.catching_up or last is None:
                continue
            oldest = min((o.first_offset for o in opens.values()), default=last + 1)
            offsets[tp] = min(oldest, last + 1)
        return offsets

    def counts(self) -> tuple[int, int]:
        """(exchanges waiting for their end, finished exchanges whose callback is still due)."""
        waiting = callbacks = 0
        for opens in self.open.values():
            for o in opens.values():
                if o.final is None:
                    waiting += 1
                else:
                    callbacks += 1
        return waiting, callbacks

    def _schedule(self, at_ms: float, tp: TopicPartition, eid: str) -> None:
        heapq.heappush(self._due, _Due(at_ms, tp.topic, tp.partition, eid))


def _next_at(final: Final) -> float:
    return float((final.callback or {}).get("next_at", 0))
