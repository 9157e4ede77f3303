"""What a provider's reply means for its caller, judged against the service's contract.

The gateway (synchronous exchanges) and the keeper (stored exchanges) judge
replies with the same two functions, so both answer the same reply alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from broker.contracts.catalog import Service
from broker.errors import InvalidResponse, NdxpError, ProviderError, Timeout
from broker.model.documents import Final, Pending, Status
from broker.model.envelope import Reply, ReplyOutcome
from broker.model.records import Outcome


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the gateway answers for a provider's reply, after checking it against the contract."""

    outcome: str
    status: int
    body: bytes
    problem: bool


def judge(svc: Service, reply: Reply) -> Verdict:
    """Check a reply against its service's contract.

    Raises ``ProviderError`` (the provider failed) or ``InvalidResponse``
    (it answered outside its contract); a business error passes through.
    """
    if reply.outcome is ReplyOutcome.PROVIDER_ERROR:
        raise ProviderError(_detail(reply.body) or f"{svc.provider} failed to answer")
    if reply.outcome is ReplyOutcome.BUSINESS_ERROR:
        return Verdict(Outcome.BUSINESS_ERROR, reply.status, reply.body, problem=True)
    try:
        answer = orjson.loads(reply.body)
    except orjson.JSONDecodeError as exc:
        raise InvalidResponse(f"{svc.key} answered with invalid JSON") from exc
    bad = svc.response.violations(answer)
    if bad:
        raise InvalidResponse(
            f"{svc.key} answered outside its contract",
            extra={"errors": [v.as_dict() for v in bad]},
        )
    return Verdict(Outcome.OK, 200, reply.body, problem=False)


def finish(pending: Pending, svc: Service | None, reply: Reply | None, t_out: float) -> Final:
    """The final document of ``pending`` for ``reply`` (None: its deadline passed unanswered)."""
    eid = pending.exchange_id
    status: Status
    try:
        if reply is None:
            raise Timeout(f"{pending.provider}/{pending.service} did not answer before the exchange expired")
        if svc is None:  # the service left the catalog while the exchange waited
            raise ProviderError(f"{pending.provider}/{pending.service} is no longer in the catalog")
        verdict = judge(svc, reply)
        body = orjson.loads(verdict.body)
        status, http_status, outcome = (
            (Status.DONE if verdict.outcome == Outcome.OK else Status.FAILED),
            verdict.status,
            verdict.outcome,
        )
    except NdxpError as exc:
        body = exc.problem(eid)
        http_status, outcome = exc.status, exc.code
        status = Status.EXPIRED if reply is None else Status.FAILED
    except orjson.JSONDecodeError:  # a business error whose body is not JSON
        body = ProviderError("the provider's problem body is not JSON").problem(eid)
        status, http_status, outcome = Status.FAILED, 502, Outcome.PROVIDER_ERROR
    return Final(
        exchange_id=eid,
        client=pending.client,
        provider=pending.provider,
        service=pending.service,
        mode=pending.mode,
        t_in=pending.t_in,
        t_out=t_out,
        status=status,
        http_status=http_status,
        outcome=outcome,
        body=body,
        idempotency=pending.idempotency,
        fingerprint=pending.fingerprint,
    )


def _detail(body: bytes) -> str | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return str(doc.get("detail")) if isinstance(doc, dict) and doc.get("detail") else None
