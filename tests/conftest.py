"""Test harness: a real Apache Kafka for the whole session, unique topic names.

The session fixture starts a single-node local Kafka (jars via Maven, KRaft)
unless NDXP_KAFKA_BOOTSTRAP names an existing cluster. When start-up fails,
the broker log tail is part of the failure message.

Every topic and consumer group a test run touches starts with a prefix of
its own (``NDXP_TOPIC_PREFIX=test-<run>``, set here for this process and
every process it starts): run against a shared cluster, the tests never
join the real platform's groups nor write into its topics.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from broker.dev.localkafka import LocalKafka
from broker.errors import LocalKafkaError
from broker.kafka import admin_client
from broker.settings import Settings

os.environ.setdefault("NDXP_TOPIC_PREFIX", f"test-{uuid.uuid4().hex[:8]}")  # inherited by children
RUN_PREFIX = os.environ["NDXP_TOPIC_PREFIX"]
# A part that finds its (test's) live registry empty imports the test's registry file and contracts.
os.environ.setdefault("NDXP_REGISTRY_SEED", "1")
# The tests' callback receivers are on loopback, over http (a test of the refusal turns it off).
os.environ.setdefault("NDXP_CALLBACK_ALLOW_PRIVATE", "1")


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    settings = Settings.from_env()
    assert settings.topic_prefix != "ndxp", "tests must not use the platform's own topic names"
    return settings


@pytest.fixture(scope="session")
def kafka_bootstrap(base_settings: Settings) -> Iterator[str]:
    if base_settings.kafka_bootstrap:
        with topics_stay_under(base_settings, base_settings.topic_prefix):
            yield base_settings.kafka_bootstrap
        return
    kafka = LocalKafka(base_settings, nodes=1, progress=print)
    try:
        bootstrap = kafka.start()
    except LocalKafkaError as exc:
        pytest.fail(f"could not start a local Apache Kafka for the tests:\n{exc}", pytrace=False)
    try:
        with topics_stay_under(base_settings.replace(kafka_bootstrap=bootstrap), base_settings.topic_prefix):
            yield bootstrap
    finally:
        kafka.stop()


@contextmanager
def topics_stay_under(settings: Settings, prefix: str) -> Iterator[None]:
    """Fails the session if its tests created a topic outside ``prefix`` (Kafka's own ``__`` aside)."""
    before = asyncio.run(_topics(settings))
    yield
    made = asyncio.run(_topics(settings)) - before
    stray = sorted(t for t in made if not t.startswith(f"{prefix}.") and not t.startswith("__"))
    if stray:
        pytest.fail(f"tests created topics outside {prefix}.*: {stray}", pytrace=False)


async def _topics(settings: Settings) -> set[str]:
    admin = admin_client(settings)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


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
        return f"{RUN_PREFIX}.{prefix}.{test}.{run}"

    return make


@pytest.fixture(autouse=True)
def _collect_garbage_between_tests() -> Iterator[None]:
    """Run finalizers between tests, not inside whatever runs next.

    A fenced or killed aiokafka client leaves futures whose finalizers log
    "exception was never retrieved"; run in the middle of a later import they
    trip CPython 3.11.7's parser ("AST constructor recursion depth mismatch").
    """
    yield
    gc.collect()
