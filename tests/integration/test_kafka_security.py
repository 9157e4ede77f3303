"""Every Kafka client speaks SASL_SSL (SCRAM-SHA-512 over TLS) when configured, end to end."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from broker.counter.counter import TxCounter
from broker.dev.localkafka import LocalKafka
from broker.kafka import make_producer
from broker.metrics import CounterMetrics
from broker.settings import Settings
from tests.integration.exchange_fixtures import (
    EchoHandlers,
    running_adapter,
    running_gateway,
    write_contracts,
    write_registry,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_the_platform_runs_on_a_sasl_ssl_kafka_and_wrong_credentials_are_refused(
    base_settings: Settings, tmp_path: Path
) -> None:
    provider = f"tp{uuid.uuid4().hex[:10]}"
    kafka = LocalKafka(base_settings, nodes=1, data_dir=tmp_path / "kafka", secure=True)
    await asyncio.to_thread(kafka.start)
    try:
        settings = kafka.client_settings().replace(
            schemas_dir=write_contracts(tmp_path, provider),
            registry_path=write_registry(tmp_path, provider),
            instance_id=f"test-{uuid.uuid4().hex[:8]}",
        )
        assert settings.kafka_security_protocol == "SASL_SSL"
        assert settings.kafka_sasl_password is not None
        assert settings.kafka_sasl_password not in repr(settings)
        counter = TxCounter(settings, CounterMetrics(CollectorRegistry()))
        async with (
            counter,
            running_adapter(settings, provider, EchoHandlers()),
            running_gateway(settings) as (http, _),
        ):
            resp = await http.post(
                f"/v1/exchange/{provider}/echo",
                json={"msg": "tls"},
                headers={"Authorization": "Bearer key-alice"},
            )
            assert resp.status == 200, await resp.text()
            async with asyncio.timeout(30):
                while sum(counter.counts.values()) < 1:
                    await asyncio.sleep(0.1)
        wrong = make_producer(
            settings.replace(kafka_sasl_password="not-the-password"), request_timeout_ms=5000
        )
        with pytest.raises(KafkaError):
            async with asyncio.timeout(30):
                await wrong.start()
        await wrong.stop()
    finally:
        await asyncio.to_thread(kafka.stop)
