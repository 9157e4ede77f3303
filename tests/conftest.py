"""Test harness: a real Apache Kafka for the whole session, unique topic names.

The session fixture starts a single-node local Kafka (jars via Maven, KRaft)
unless NDXP_KAFKA_BOOTSTRAP names an existing cluster. When start-up fails,
the broker log tail is part of the failure message.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from broker.localkafka import LocalKafka, LocalKafkaError
from broker.settings import Settings


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def kafka_bootstrap(base_settings: Settings) -> Iterator[str]:
    if base_settings.kafka_bootstrap:
        yield base_settings.kafka_bootstrap
        return
    kafka = LocalKafka(base_settings, nodes=1, progress=print)
    try:
        bootstrap = kafka.start()
    except LocalKafkaError as exc:
        pytest.fail(f"could not start a local Apache Kafka for the tests:\n{exc}", pytrace=False)
    try:
        yield bootstrap
    finally:
        kafka.stop()


@pytest.fixture
def settings(base_settings: Settings, kafka_bootstrap: str) -> Settings:
    """Settings pointing at the session's Kafka."""
    return base_settings.replace(kafka_bootstrap=kafka_bootstrap)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Makes names unique to this test, so tests never see each other's data."""
    test = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60].strip("-")
    run = uuid.uuid4().hex[:8]

    def make(prefix: str) -> str:
        return f"{prefix}.{test}.{run}"

    return make
