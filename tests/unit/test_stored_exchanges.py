"""Stored exchanges without Kafka: documents, the claim rule, judging a reply, signatures, Prefer."""

from __future__ import annotations

import hmac
from pathlib import Path

import orjson
import pytest

from broker.contracts.catalog import Catalog
from broker.contracts.registry import Registry
from broker.contracts.verdicts import finish
from broker.errors import RegistryError
from broker.keeper.callbacks import sign
from broker.model.documents import (
    IDEMPOTENCY_WINDOW_MS,
    Claims,
    Final,
    Pending,
    decode,
    fingerprint,
    idempotency_hash,
    partition_for,
)
from broker.model.envelope import Reply, ReplyOutcome
from broker.model.records import Mode
from tests.fixtures import write_contracts, write_registry


def pending(eid: str, t_in: float = 1_000_000.0, idem: str | None = "k", fp: str | None = "f") -> Pending:
    return Pending(
        exchange_id=eid, client="alice", provider="prov", service="echo", mode=Mode.ASYNC,
        t_in=t_in, deadline_ms=int(t_in) + 5000, idempotency=idem, fingerprint=fp,
    )  # fmt: skip


def test_the_first_claim_on_a_key_wins_for_24_hours_then_a_new_one_may() -> None:
    claims = Claims()
    assert claims.apply(pending("a"))
    assert not claims.apply(pending("b", t_in=1_000_500.0)), "a later claim within 24 h loses"
    assert claims.apply(pending("a")), "the holder's own document read again still holds"
    held = claims.holder("k", 1_000_600.0)
    assert held is not None
    assert (held.exchange_id, held.fingerprint) == ("a", "f")
    later = 1_000_000.0 + IDEMPOTENCY_WINDOW_MS
    assert claims.holder("k", later) is None, "the key is free after 24 h"
    assert claims.apply(pending("c", t_in=later)), "a claim 24 h after the first wins anew"
    again = claims.holder("k", later + 1)
    assert again is not None
    assert (again.exchange_id, again.fingerprint) == ("c", "f")
    assert claims.apply(pending("d", idem=None)), "no key: no claim to lose"


def test_keys_and_partitions_are_bound_to_the_caller_and_stable() -> None:
    assert idempotency_hash("alice", "k1") != idempotency_hash("bob", "k1")
    assert idempotency_hash("alice", "k1") == idempotency_hash("alice", "k1")
    assert "k1" not in idempotency_hash("alice", "k1")
    assert fingerprint("p", "s", b"{}") != fingerprint("p", "t", b"{}")
    parts = {partition_for(f"key-{i}", 8) for i in range(200)}
    assert parts == set(range(8)), "keys spread over every partition"
    assert partition_for("x", 8) == partition_for("x", 8)


def test_documents_round_trip_and_reject_what_is_not_one() -> None:
    p = pending("a")
    assert decode(p.encode()) == p
    with pytest.raises(ValueError, match="not an exchange document"):
        decode(b'{"kind": "final"}')
    with pytest.raises(ValueError, match="not an exchange document"):
        decode(b"[1, 2]")


def test_finish_checks_the_reply_against_the_contract(tmp_path: Path) -> None:
    catalog = Catalog.load(write_contracts(tmp_path, "prov"))
    svc = catalog.get("prov", "echo")
    assert svc is not None
    p = pending("a")
    ok = Reply(exchange_id="a", status=200, outcome=ReplyOutcome.OK, body=b'{"msg": "x", "via": "t"}')
    done = finish(p, svc, ok, 2.0)
    assert (done.status, done.http_status, done.outcome) == ("done", 200, "ok")
    assert done.view()["result"] == {"msg": "x", "via": "t"}
    bad = Reply(exchange_id="a", status=200, outcome=ReplyOutcome.OK, body=b'{"msg": 1}')
    failed = finish(p, svc, bad, 2.0)
    assert (failed.status, failed.http_status, failed.outcome) == ("failed", 502, "invalid_response")
    assert failed.view()["problem"]["exchange_id"] == "a"
    business = Reply(
        exchange_id="a", status=404, outcome=ReplyOutcome.BUSINESS_ERROR, body=b'{"code": "not_found_here"}'
    )
    assert finish(p, svc, business, 2.0).view()["problem"] == {"code": "not_found_here"}
    expired = finish(p, svc, None, 2.0)
    assert (expired.status, expired.http_status, expired.outcome) == ("expired", 504, "timeout")
    assert isinstance(decode(expired.encode()), Final)


def test_callback_signature_is_hmac_of_timestamp_and_body() -> None:
    body = orjson.dumps({"exchange_id": "a"})
    sig = sign(b"secret-secret-secret", "1700000000", body)
    expected = hmac.new(b"secret-secret-secret", b"1700000000." + body, "sha256").hexdigest()
    assert sig == f"sha256={expected}"
    assert sign(b"secret-secret-secret", "1700000001", body) != sig, "the timestamp is signed"


def test_registry_callbacks_come_only_from_the_registry_and_are_checked(tmp_path: Path) -> None:
    import yaml

    catalog = Catalog.load(write_contracts(tmp_path, "prov"))
    path = write_registry(tmp_path, "prov")
    raw = yaml.safe_load(path.read_text())
    raw["agencies"][1]["callback"] = {"url": "https://alice.example/cb", "secret": "0123456789abcdef"}
    registry = Registry.from_dict(raw, catalog)
    alice = registry.agencies["alice"]
    assert alice.callback_url == "https://alice.example/cb"
    assert "0123456789abcdef" not in repr(alice), "the secret never shows in repr"
    for bad in (
        {"url": "file:///etc/passwd", "secret": "0123456789abcdef"},
        {"url": "https://x.example/cb", "secret": "short"},
        {"url": "https://x.example/cb"},
    ):
        raw["agencies"][1]["callback"] = bad
        with pytest.raises(RegistryError, match="callback"):
            Registry.from_dict(raw, catalog)


def test_the_change_feed_makes_events_that_pass_their_schemas() -> None:
    import datetime as dt
    import random

    from adapters.demo.changes import FEED

    catalog = Catalog.load(Path(__file__).resolve().parents[2] / "schemas")
    r = random.Random(1)
    for _, provider, type_, make in FEED:
        ev = catalog.event(provider, type_)
        assert ev is not None, f"{provider}/{type_} is not in the catalog"
        for _ in range(50):
            data = make(r, dt.date(2026, 12, 1))
            assert ev.schema.violations(data) == [], (provider, type_, data)


def test_the_partition_of_a_key_never_changes_between_versions() -> None:
    """Gateways of two versions side by side (a rolling upgrade) must send an exchange's documents
    to one partition: the mapping is part of the stored format, pinned here."""
    assert [partition_for(f"key-{i}", 8) for i in range(6)] == [7, 3, 1, 4, 5, 4]


def test_a_final_document_carries_the_exchange_and_every_way_it_can_end(tmp_path: Path) -> None:
    catalog = Catalog.load(write_contracts(tmp_path, "prov"))
    svc = catalog.get("prov", "echo")
    assert svc is not None
    p = pending("a")
    business = Reply(
        exchange_id="a", status=404, outcome=ReplyOutcome.BUSINESS_ERROR, body=b'{"code": "not_found_here"}'
    )
    f = finish(p, svc, business, 2.0)
    assert (f.status, f.http_status, f.outcome) == ("failed", 404, "business_error")
    # The exchange's identity and its caller's key travel into the final document unchanged.
    assert (f.exchange_id, f.client, f.provider, f.service, f.mode) == ("a", "alice", "prov", "echo", "async")
    assert (f.t_in, f.t_out, f.idempotency, f.fingerprint) == (p.t_in, 2.0, "k", "f")
    crashed = Reply(
        exchange_id="a", status=500, outcome=ReplyOutcome.PROVIDER_ERROR, body=b'{"detail": "db down"}'
    )
    f = finish(p, svc, crashed, 2.0)
    assert (f.status, f.http_status, f.outcome) == ("failed", 502, "provider_error")
    assert f.view()["problem"]["detail"] == "db down"
    gone = finish(p, None, crashed, 2.0)  # the service left the catalog while the exchange waited
    assert (gone.status, gone.outcome) == ("failed", "provider_error")
    assert "no longer in the catalog" in gone.view()["problem"]["detail"]
    garbled = Reply(exchange_id="a", status=409, outcome=ReplyOutcome.BUSINESS_ERROR, body=b"<html>")
    f = finish(p, svc, garbled, 2.0)
    assert (f.status, f.http_status, f.outcome) == ("failed", 502, "provider_error")
    not_json = Reply(exchange_id="a", status=200, outcome=ReplyOutcome.OK, body=b"{")
    f = finish(p, svc, not_json, 2.0)
    assert (f.http_status, f.outcome) == (502, "invalid_response")
