"""A client's limits are the client's: shared by an instance's worker processes, divided among instances.

The workers share one memory-mapped file (:mod:`broker.gateway.shared`); these tests run real worker
processes on it, so a bucket that was per process would show.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from broker.contracts.registry import Agency
from broker.errors import Overloaded, RateLimited
from broker.gateway import shared
from broker.gateway.limits import Limits
from broker.gateway.shared import SharedLimits


def _limits(path: Path, worker: int, **kw: int) -> Limits:
    return Limits(default_rate=1000, max_in_flight=100, workers=2, shared=SharedLimits(path, worker), **kw)


def _admit_all(path: str, worker: int, tries: int, out: multiprocessing.Queue[int]) -> None:
    limits = _limits(Path(path), worker)
    agency = Agency(id="vcb", code="VCB", name="Vietcombank", rate_limit=0.01)  # refills nothing here
    granted = 0
    for _ in range(tries):
        try:
            limits.charge(agency)
            granted += 1
        except RateLimited:
            pass
    out.put(granted)


def test_two_worker_processes_share_one_clients_bucket(tmp_path: Path) -> None:
    """Mutation: a bucket per process lets the client through twice (each worker grants its burst)."""
    path = shared.create(tmp_path / "limits")
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=_admit_all, args=(str(path), w, 5, out)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    granted = out.get(timeout=5) + out.get(timeout=5)
    assert granted == 1, f"{granted} granted of the client's burst of 1"


def test_in_flight_is_capped_across_workers_and_a_killed_worker_leaks_none(tmp_path: Path) -> None:
    path = shared.create(tmp_path / "limits")
    agency = Agency(id="vcb", code="VCB", name="Vietcombank", rate_limit=1000.0, max_in_flight=3)
    one, two = _limits(path, 0), _limits(path, 1)
    held = [one.admit(agency), one.admit(agency), two.admit(agency)]
    for h in held:
        h.__enter__()
    with pytest.raises(Overloaded), one.admit(agency):
        pass
    with pytest.raises(Overloaded), two.admit(agency):
        pass
    # Worker 0 is killed holding two: its restart (same index) starts from none of its own.
    restarted = _limits(path, 0)
    with restarted.admit(agency):
        assert restarted.shared is not None
        assert restarted.shared.in_flight("vcb") == 2
    held[2].__exit__(None, None, None)
    assert restarted.shared.in_flight("vcb") == 0


def test_failed_logins_of_an_address_count_across_workers(tmp_path: Path) -> None:
    path = shared.create(tmp_path / "limits")
    one = Limits(default_rate=10, max_in_flight=10, auth_failure_rate=1.0, shared=SharedLimits(path, 0))
    two = Limits(default_rate=10, max_in_flight=10, auth_failure_rate=1.0, shared=SharedLimits(path, 1))
    for _ in range(4):  # the allowance: 4 × the rate at once
        one.check_address("198.51.100.7")
        one.auth_failed("198.51.100.7")
    with pytest.raises(RateLimited):
        two.check_address("198.51.100.7")
    two.check_address("198.51.100.8")  # another address is not refused


def test_each_instance_takes_its_share_of_a_clients_rate_and_cap(tmp_path: Path) -> None:
    agency = Agency(id="a", code="A", name="A", rate_limit=10.0, max_in_flight=4)
    for instances, allowed, cap in ((1, 10, 4), (2, 5, 2), (3, 3, 2)):
        limits = Limits(
            default_rate=1000,
            max_in_flight=100,
            shared=SharedLimits(shared.create(tmp_path / f"l{instances}"), 0),
        )
        limits.instances = instances
        granted = 0
        for _ in range(50):
            try:
                limits.charge(agency)
                granted += 1
            except RateLimited:
                continue
        assert granted == allowed, (instances, granted)
        assert limits._cap(agency) == cap


def test_a_rate_change_refills_only_that_clients_shared_bucket(tmp_path: Path) -> None:
    path = shared.create(tmp_path / "limits")
    limits = _limits(path, 0)
    a = Agency(id="a", code="A", name="A", rate_limit=0.01)
    b = Agency(id="b", code="B", name="B", rate_limit=0.01)
    limits.charge(a)
    limits.charge(b)
    limits.reset_rates(["a"])
    limits.charge(a)
    with pytest.raises(RateLimited):
        limits.charge(b)


def test_a_worker_index_beyond_the_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most"):
        SharedLimits(shared.create(tmp_path / "limits"), shared.MAX_WORKERS)
