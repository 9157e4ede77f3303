"""What the adapter runtime decides about a request, as plain code (no Kafka, no handler).

- :class:`ReplyMemory`: the bounded memory of recent replies, by exchange id,
  that answers a redelivered request without processing it again;
- :func:`triage`: what becomes of a request before its handler runs (dead
  letter, an answer from memory, skipped past its deadline, or handled);
- :func:`change_records`: what a write's recorded changes become in its
  transaction (data records, events, and the events' transaction records);
- :class:`Turns`: which lookups run now, and which wait their service's turn.

The runtime (``adapters.runtime.adapter``) does the I/O around them; the
unit tests drive them directly.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import orjson

from adapters.runtime.request import Change
from broker.kafka import Outgoing
from broker.model.envelope import H_EXCHANGE_ID, Names, Reply, RequestMeta, now_ms
from broker.model.events import envelope, published_record

ENTRY_BYTES = 400
"""What one remembered reply is counted besides its body and id (the Reply, the id's str, the
ordered dict's entry): tracemalloc puts them at about 215 bytes; this errs high."""


def _cost(reply: Reply) -> int:
    return ENTRY_BYTES + len(reply.body) + len(reply.exchange_id)


REPLAY_GRACE_MS = 30_000
"""How long past its request's deadline a reply is kept: a redelivery after the deadline is skipped
anyway (:func:`triage`), but the gateway's clock may run behind ours; 30 s covers any sane skew."""


class ReplyMemory:
    """The replies of requests still within their deadline (and :data:`REPLAY_GRACE_MS`), by exchange
    id (exchange ids are assigned by the gateway only), and at most ``size`` of them and ``budget``
    bytes, the oldest forgotten first. Bounded by time, the memory holds seconds of replies: about the
    rate times the longest timeout, flat under a steady load (a count alone let an adapter grow to its
    whole budget, hundreds of MB over a few providers, found by the soak)."""

    __slots__ = ("_bytes", "_expiry", "_replies", "budget", "size")

    def __init__(self, size: int, budget: int | None = None) -> None:
        self.size = size
        self.budget = budget
        self._bytes = 0
        self._replies: OrderedDict[str, tuple[Reply, int]] = OrderedDict()
        """Exchange id → (reply, when it may be forgotten, epoch ms)."""
        self._expiry: list[tuple[int, str]] = []
        """A heap of (when, exchange id); an entry whose reply was replaced or evicted is skipped."""

    @property
    def bytes(self) -> int:
        """What the remembered replies cost, as counted against ``budget``."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._replies)

    def get(self, exchange_id: str) -> Reply | None:
        kept = self._replies.get(exchange_id)
        return None if kept is None else kept[0]

    def remember(self, replies: Iterable[tuple[Reply, int]], at_ms: int | None = None) -> None:
        """Replies that went out, each with its request's deadline (epoch ms); forgets those whose
        deadline passed :data:`REPLAY_GRACE_MS` ago, then the oldest beyond ``size`` or ``budget``."""
        for reply, deadline_ms in replies:
            self._forget(reply.exchange_id)
            until = deadline_ms + REPLAY_GRACE_MS
            self._replies[reply.exchange_id] = (reply, until)
            self._bytes += _cost(reply)
            heapq.heappush(self._expiry, (until, reply.exchange_id))
        now = now_ms() if at_ms is None else at_ms
        expiry, replies_ = self._expiry, self._replies
        while expiry and expiry[0][0] <= now:
            until, eid = heapq.heappop(expiry)
            kept = replies_.get(eid)
            if kept is not None and kept[1] == until:
                self._forget(eid)
        budget = self.budget
        while replies_ and (len(replies_) > self.size or (budget is not None and self._bytes > budget)):
            self._forget(next(iter(replies_)))
        if len(expiry) > 2 * len(replies_) + 1024:  # entries of replies replaced or evicted: rebuild
            self._expiry = [(until, eid) for eid, (_, until) in replies_.items()]
            heapq.heapify(self._expiry)

    def _forget(self, exchange_id: str) -> None:
        kept = self._replies.pop(exchange_id, None)
        if kept is not None:
            self._bytes -= _cost(kept[0])


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Not a request we can read: to ``<prefix>.dlq.<provider>``, with why."""

    reason: str


@dataclass(frozen=True, slots=True)
class Replay:
    """Answered before (a redelivery): the same reply again, not processed twice."""

    meta: RequestMeta
    reply: Reply


@dataclass(frozen=True, slots=True)
class Expired:
    """Its deadline passed: its caller is gone; skipped and counted."""

    meta: RequestMeta


@dataclass(frozen=True, slots=True)
class Handle:
    """A request to hand to its handler."""

    meta: RequestMeta


Triage = DeadLetter | Replay | Expired | Handle


def triage(
    headers: Sequence[tuple[str, bytes | None]], memory: ReplyMemory, now_ms: int | None = None
) -> Triage:
    """What becomes of a request with these headers, before any handler runs."""
    try:
        meta = RequestMeta.from_headers(headers)
    except ValueError as exc:
        return DeadLetter(f"undecodable headers: {exc}")
    remembered = memory.get(meta.exchange_id)
    if remembered is not None:
        return Replay(meta, remembered)
    if meta.expired(now_ms):
        return Expired(meta)
    return Handle(meta)


def change_records(
    names: Names, tx_topic: str, provider: str, meta: RequestMeta, changes: Iterable[Change]
) -> list[Outgoing]:
    """The records of a write's changes, to go in the transaction of its reply: each data change to
    ``<prefix>.data.<provider>``, each event to its topic with its transaction record (counted like
    any publication)."""
    header = [(H_EXCHANGE_ID, meta.exchange_id.encode())]
    out: list[Outgoing] = []
    for c in changes:
        if c.event is None:
            out.append(Outgoing(names.data(provider), orjson.dumps(c.value), c.key.encode(), header))
            continue
        event_id, value, t_ms = envelope(
            provider=provider, type_=c.event, key=c.key, data=c.value,
            purpose=meta.purpose, exchange_id=meta.exchange_id,  # the caller's officer stays with the caller
        )  # fmt: skip
        out.append(Outgoing(names.events(provider, c.event), value, c.key.encode(), header))
        out.append(Outgoing(tx_topic, published_record(event_id, provider, c.event, t_ms, value).encode()))
    return out


T = TypeVar("T")


class Turns(Generic[T]):
    """Which of a provider's lookups run now: at most ``total`` at once and at most ``per_service`` of
    one service; the others wait, in order, per service, so that a slow or backlogged service leaves
    room for the rest (its requests share the provider's request topic, decision 0012). A waiting
    request past its deadline may start at once, whatever the limits: it is only counted as expired."""

    def __init__(self, total: int, per_service: int) -> None:
        self.total, self.per_service = total, per_service
        self.running: Counter[str] = Counter()
        self.running_total = 0
        self.waiting: dict[str, deque[tuple[T, int]]] = {}

    def _may_run(self, service: str) -> bool:
        return self.running_total < self.total and self.running[service] < self.per_service

    def _start(self, service: str) -> None:
        self.running[service] += 1
        self.running_total += 1

    def admit(self, service: str, item: T, deadline_ms: int) -> bool:
        """A request arrives: True if it runs now (counted as running), else it waits."""
        if service not in self.waiting and self._may_run(service):
            self._start(service)
            return True
        self.waiting.setdefault(service, deque()).append((item, deadline_ms))
        return False

    def done(self, service: str) -> None:
        """A running request of ``service`` finished."""
        self.running_total -= 1
        self.running[service] -= 1
        if not self.running[service]:
            del self.running[service]

    def ready(self, now: int) -> list[tuple[str, T]]:
        """The waiting requests that start now (counted as running): those the limits allow, in order
        per service, and any past its deadline."""
        out: list[tuple[str, T]] = []
        for service in list(self.waiting):
            queue = self.waiting[service]
            while queue and (queue[0][1] <= now or self._may_run(service)):
                out.append((service, queue.popleft()[0]))
                self._start(service)
            if not queue:
                del self.waiting[service]
        return out

    def _take(self, match: Callable[[T, int], bool]) -> list[tuple[str, T]]:
        """Remove the waiting requests ``match`` (item, deadline) picks, wherever they are; them."""
        out: list[tuple[str, T]] = []
        for service, queue in list(self.waiting.items()):
            kept: deque[tuple[T, int]] = deque()
            for item, deadline in queue:
                if match(item, deadline):
                    out.append((service, item))
                else:
                    kept.append((item, deadline))
            if kept:
                self.waiting[service] = kept
            else:
                del self.waiting[service]
        return out

    def expired(self, now: int) -> list[tuple[str, T]]:
        """Every waiting request past its deadline, wherever it is in its queue, to start now (counted
        as running): it is only counted as expired, and waits no longer behind live ones."""
        out = self._take(lambda _, deadline: deadline <= now)
        for service, _ in out:
            self._start(service)
        return out

    def drop(self, keep: Callable[[T], bool]) -> int:
        """Forget the waiting requests ``keep`` refuses (their partitions went to another member);
        how many."""
        return len(self._take(lambda item, _: not keep(item)))
