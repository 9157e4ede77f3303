"""KIP-794 for aiokafka: keyless records avoid a partition whose leader died or stalled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from broker.errors import KafkaUnavailable
from broker.kafka import Reachability, topic_partitions
from broker.kafka.routing import LeaderWatch

DEAD = 2


class _Cluster:
    """Topic ``t``: six partitions, partition p led by node p % 3."""

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(6)) if topic == "t" else None

    def leader_for_partition(self, partition: TopicPartition) -> int | None:
        return int(partition.partition) % 3


class _Client:
    cluster = _Cluster()

    async def fetch_all_metadata(self) -> object:
        return {}


class _Producer:
    """Sends to node ``DEAD``'s partitions hang (or fail, with ``failing``); the others are acked."""

    def __init__(self, failing: bool = False) -> None:
        self.client = _Client()
        self.failing = failing
        self.sent: list[int | None] = []

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   headers: Any = None) -> asyncio.Future[Any]:  # fmt: skip
        self.sent.append(partition)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if partition is not None and partition % 3 == DEAD:
            if self.failing:
                fut.set_exception(KafkaConnectionError("broker gone"))
        else:
            fut.set_result(partition)
        return fut


async def test_a_hedged_send_held_by_a_dead_leader_goes_once_more_elsewhere_and_the_leader_is_avoided() -> (
    None
):
    producer = _Producer()
    watch = LeaderWatch(producer, stall_s=0.05, avoid_s=60, sticky_s=0)  # type: ignore[arg-type]
    watch._sticky["t"] = (DEAD, float("inf"))  # the first choice: partition 2, the dead leader's
    answered: list[Any] = [await asyncio.wait_for(watch.hedged("t", b"r"), 2) for _ in range(30)]
    assert all(p % 3 != DEAD for p in answered), answered
    assert watch.hedges == 1, "the first send, to the dead leader's partition, was hedged"
    held = [p for p in producer.sent if p is not None and p % 3 == DEAD]
    assert len(held) == 1, f"after the first stall, nothing more went to the dead leader: {producer.sent}"
    assert watch.suspect(DEAD)
    assert not watch.suspect(0)


async def test_a_leader_that_fails_a_send_is_avoided_and_none_is_avoided_when_all_are() -> None:
    producer = _Producer(failing=True)
    watch = LeaderWatch(producer, stall_s=5, avoid_s=60, sticky_s=0)  # type: ignore[arg-type]
    delivery = await watch.send("t", b"r", partition=2)
    await asyncio.sleep(0)  # its callback runs
    assert delivery.exception() is not None
    assert watch.suspect(DEAD)
    assert {watch.choose("t") for _ in range(50)} <= {0, 1, 3, 4}
    for node in (0, 1):
        watch._blame(node, "test")
    assert set(watch.good("t")) == set(range(6)), "every leader suspect: every partition, not none"


async def test_a_second_copy_goes_to_another_leader_and_an_unknown_topic_is_the_producers_choice() -> None:
    watch = LeaderWatch(_Producer(), sticky_s=0)  # type: ignore[arg-type]
    for p in range(6):
        for _ in range(10):
            q = watch.choose("t", besides=p)
            assert q is not None
            assert q % 3 != p % 3
    assert watch.choose("unknown") is None


async def test_a_spare_partition_is_used_only_when_no_other_is_good() -> None:
    """Lookups' replies keep off the partition of writes' replies (transactional: a read_committed
    reader waits there for each transaction), unless every other partition's leader is suspect."""
    producer = _Producer()
    watch = LeaderWatch(producer, sticky_s=0)  # type: ignore[arg-type]
    for _ in range(30):
        await watch.send("t", b"r", spare=0)
    assert set(producer.sent) == {1, 2, 3, 4, 5}
    for node in (1, 2):
        watch._blame(node, "test")
    assert {watch.choose("t", spare=3) for _ in range(30)} == {0}, "a good leader's other partition"
    watch._blame(0, "test")
    assert {watch.choose("t", spare=0) for _ in range(50)} == set(range(1, 6)), "all suspect: any but it"


class _LateTopicConsumer:
    """A consumer whose broker learns of topic ``t`` only at its ``known_after``-th metadata refresh."""

    def __init__(self, known_after: int) -> None:
        self.refreshes = 0
        self.known_after = known_after
        outer = self

        class _Client:
            async def force_metadata_update(self) -> bool:
                outer.refreshes += 1
                return True

        self._client = _Client()

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {1, 0} if self.refreshes >= self.known_after else None


async def test_a_topic_just_created_is_waited_for_and_a_missing_one_named() -> None:
    late = _LateTopicConsumer(known_after=3)
    tps = await topic_partitions(late, "t", within_s=5)  # type: ignore[arg-type]
    assert tps == [TopicPartition("t", 0), TopicPartition("t", 1)]
    assert late.refreshes == 3
    never = _LateTopicConsumer(known_after=10**6)
    with pytest.raises(KafkaUnavailable, match="topic t has no partitions"):
        await topic_partitions(never, "t", within_s=0.3)  # type: ignore[arg-type]
    assert 2 <= never.refreshes <= 4


async def test_the_good_partitions_are_reused_briefly_and_recomputed_once_a_leader_is_blamed() -> None:
    watch = LeaderWatch(_Producer(), sticky_s=0)  # type: ignore[arg-type]
    assert watch.good("t") == list(range(6))
    assert watch.good("t") is watch.good("t"), "within GOOD_FOR_S: the same list, not computed again"
    watch._blame(DEAD, "test")
    assert watch.good("t") == [0, 1, 3, 4], "a blame is seen at once"
    assert watch.good("unknown") == []


async def test_a_hedged_send_answers_with_its_ack_or_its_error_without_waiting_the_stall() -> None:
    watch = LeaderWatch(_Producer(failing=True), stall_s=30, sticky_s=0)  # type: ignore[arg-type]
    watch._sticky["t"] = (0, float("inf"))  # partition 0: acknowledged
    answer: Any = await asyncio.wait_for(watch.hedged("t", b"r"), 1)
    assert answer == 0
    watch._sticky["t"] = (DEAD, float("inf"))  # partition 2: its leader refuses it
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(watch.hedged("t", b"r"), 1)
    assert watch.hedges == 0


async def test_kafka_is_probed_over_the_probes_own_connections_and_the_probe_closed_with_it() -> None:
    """The producer's connections hold writes that wait for a fencing: a probe over them would time
    out as though Kafka were gone. Its own client answers."""

    class _Stuck:
        async def fetch_all_metadata(self) -> object:
            await asyncio.sleep(3600)
            return {}

    class _Probe:
        closed = False
        asked = 0

        async def fetch_all_metadata(self) -> object:
            self.asked += 1
            return {}

        async def close(self) -> None:
            self.closed = True

    producer = _Producer()
    producer.client = _Stuck()  # type: ignore[assignment]
    probe = _Probe()
    kafka = Reachability(producer, interval_s=0.01, timeout_s=0.02, probe=probe)  # type: ignore[arg-type]
    kafka.start()
    await asyncio.sleep(0.3)
    assert kafka.ok, kafka.last_error
    assert probe.asked >= 5
    await kafka.stop()
    assert probe.closed
