"""Kafka's transient states stay quiet at start, and speak up when they persist."""

from __future__ import annotations

import logging

import pytest

from broker.logs import TransientKafkaErrors


def record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("aiokafka.consumer", level, __file__, 1, msg, None, None)


def test_transient_states_are_held_back_then_reported_once_per_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("broker.logs.time.monotonic", lambda: now[0])
    quiet = TransientKafkaErrors(persist_s=30)
    coordinator = "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError"
    assert not quiet.filter(record(coordinator)), "a state Kafka is settling is no error yet"
    now[0] += 10
    assert not quiet.filter(record(coordinator))
    assert quiet.filter(record("Unable to connect to node 1")), "other errors always pass"
    now[0] += 25  # 35 s into the episode, seen every few seconds
    persisting = record(coordinator)
    assert quiet.filter(persisting)
    assert persisting.levelno == logging.WARNING
    assert "for 35s now" in persisting.getMessage()
    now[0] += 5
    assert not quiet.filter(record(coordinator)), "at most one line per period"
    now[0] += 100  # quiet for long: the next occurrence starts a new episode
    assert not quiet.filter(record(coordinator))


def test_status_quantiles_interpolate_within_a_bucket() -> None:
    from broker.ops.status import quantile

    buckets = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantile(buckets, 0.5) == pytest.approx(0.01)
    assert quantile(buckets, 0.7) == pytest.approx(0.055)
    assert quantile(buckets, 0.99) == pytest.approx(0.91)
    assert quantile({float("inf"): 0.0}, 0.5) is None
