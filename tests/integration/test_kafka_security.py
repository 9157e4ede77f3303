"""Every Kafka client speaks SASL_SSL (SCRAM-SHA-512 over TLS) when configured, end to end."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from prometheus_client import CollectorRegistry

from adapters.runtime import Request
from adapters.runtime.adapter import Adapter
from broker.counter.counter import TxCounter
from broker.dev.localkafka import LocalKafka
from broker.kafka import Topics, admin_client, ensure_topics, make_producer, members
from broker.kafka.members import acls, kafka_user, revoke
from broker.metrics import CounterMetrics
from broker.model.envelope import H_ORIGIN, Reply, ReplyOutcome, RequestMeta, reply_mac
from broker.settings import Settings
from tests.fixtures import sample
from tests.integration.exchange_fixtures import (
    EchoHandlers,
    running_adapter,
    running_admin,
    running_gateway,
    write_contracts,
    write_registry,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
OPS = {"Authorization": "Bearer key-ops"}


@asynccontextmanager
async def secure_platform(base: Settings, tmp_path: Path, provider: str) -> AsyncIterator[Settings]:
    """A local Kafka with SASL_SSL and ACLs, and the platform's settings for it (its super user)."""
    kafka = LocalKafka(base, nodes=1, data_dir=tmp_path / "kafka", secure=True)
    await asyncio.to_thread(kafka.start)
    try:
        yield kafka.client_settings().replace(
            schemas_dir=write_contracts(tmp_path, provider),
            registry_path=write_registry(tmp_path, provider),
            instance_id=f"test-{uuid.uuid4().hex[:8]}",
        )
    finally:
        await asyncio.to_thread(kafka.stop)


async def test_the_platform_runs_on_a_sasl_ssl_kafka_and_wrong_credentials_are_refused(
    base_settings: Settings, tmp_path: Path
) -> None:
    provider = f"tp{uuid.uuid4().hex[:10]}"
    async with secure_platform(base_settings, tmp_path, provider) as settings:
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


async def _send(producer: Any, topic: str) -> None:
    await (await producer.send(topic, b"forged"))


async def _described(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Kafka's answer to ``settings``' user describing ``topics`` (0, or the error: 29 is "topic
    authorization failed"; without DESCRIBE a consumer never learns a partition's leader)."""
    admin = admin_client(settings)
    await admin.start()
    try:
        return {d["topic"]: d["error_code"] for d in await admin.describe_topics(topics)}
    finally:
        await admin.close()


async def test_a_member_adapter_with_its_own_credentials_serves_its_requests_and_nothing_else(
    base_settings: Settings, tmp_path: Path
) -> None:
    """A provider's own adapter connects as its member user (SCRAM, ACLs): it serves its requests end
    to end and Kafka refuses it another provider's requests, another provider's topics and the
    registry; once revoked, it cannot connect."""
    provider, other = f"tp{uuid.uuid4().hex[:10]}", f"tq{uuid.uuid4().hex[:10]}"
    async with secure_platform(base_settings, tmp_path, provider) as platform:
        await ensure_topics(platform, [*Topics(platform).requests(other), Topics(platform).data(other)])
        async with running_admin(platform) as (admin, _):
            by_alice = await admin.post(f"/admin/v1/agencies/{provider}/kafka-credentials",
                                        headers={"Authorization": "Bearer key-alice"})  # fmt: skip
            assert by_alice.status == 403
            started = time.monotonic()
            issued = await admin.post(f"/admin/v1/agencies/{provider}/kafka-credentials", headers=OPS)
            granted_s = time.monotonic() - started
            assert issued.status == 201, await issued.text()
            creds = await issued.json()
            entry = await (await admin.get(f"/admin/v1/agencies/{provider}", headers=OPS)).json()
            assert entry["own_adapter"] is True, entry  # the generic adapter leaves it to its own
            assert "reply_secret" not in entry, "write-only: shown once, with the credentials"
        assert (creds["username"], creds["sasl_mechanism"]) == (f"member-{provider}", "SCRAM-SHA-512")
        assert (creds["security_protocol"], creds["bootstrap"]) == ("SASL_SSL", platform.kafka_bootstrap)
        assert creds["ca"].startswith("-----BEGIN CERTIFICATE-----")  # what signs the brokers' certificates
        member = platform.replace(
            kafka_sasl_username=creds["username"], kafka_sasl_password=creds["password"]
        )
        member = member.replace(reply_secret=creds["reply_secret"])  # it signs its replies
        seen_by_handler: list[RequestMeta] = []
        go_on = asyncio.Event()

        async def echo(req: Request) -> Any:
            seen_by_handler.append(req.meta)
            if req.body.get("mode") == "hold":
                await go_on.wait()
            return {"msg": req.body["msg"], "via": req.meta.reply_to}

        alice = {"Authorization": "Bearer key-alice"}
        async with (
            running_gateway(platform) as (http, gw),
            Adapter(member, provider, {"echo": echo}) as adapter,
        ):
            await adapter.wait_assigned()
            resp = await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "mine"}, headers=alice)
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["msg"] == "mine"
            # A reply for the member's exchange that its provider did not sign: dropped and counted,
            # and the exchange gets its real answer.
            held = asyncio.create_task(
                http.post(
                    f"/v1/exchange/{provider}/echo", json={"msg": "held", "mode": "hold"}, headers=alice
                )
            )
            async with asyncio.timeout(30):
                while len(seen_by_handler) < 2:
                    await asyncio.sleep(0.05)
            meta = seen_by_handler[1]
            forged = Reply(exchange_id=meta.exchange_id, status=200, outcome=ReplyOutcome.OK,
                           body=b'{"msg": "forged", "via": "x"}')  # fmt: skip
            wrong = reply_mac(b"not-the-provider's-secret-at-all-0123456789", forged.exchange_id, 200, "ok",
                              forged.body)  # fmt: skip
            forger = make_producer(member)
            await forger.start()
            try:
                for headers in (forged.headers(), [*forged.headers(), (H_ORIGIN, wrong.encode())]):
                    await (await forger.send(meta.reply_to, forged.body, headers=headers))
            finally:
                await forger.stop()
            async with asyncio.timeout(30):
                while sample(gw.metrics.registry, "ndxp_forged_replies_total", provider=provider) < 2:
                    await asyncio.sleep(0.05)
            go_on.set()
            answer = await held
            assert answer.status == 200, await answer.text()
            assert (await answer.json())["msg"] == "held", "the forged reply never answered the caller"
        names = platform.names
        refused = TopicAuthorizationFailedError.errno
        seen = await _described(member, [names.requests(provider), names.requests(other),
                                         platform.registry_topic, platform.stats_topic])  # fmt: skip
        assert seen == {names.requests(provider): 0, names.requests(other): refused,
                        platform.registry_topic: refused, platform.stats_topic: refused}, seen  # fmt: skip
        writer = make_producer(member)
        await writer.start()
        try:
            with pytest.raises(TopicAuthorizationFailedError):
                await _send(writer, names.data(other))
        finally:
            await writer.stop()
        await revoke(platform, provider)
        gone = make_producer(member, request_timeout_ms=5000)
        with pytest.raises(KafkaError):
            async with asyncio.timeout(30):
                await gone.start()
        await gone.stop()
        # Where Strimzi's User Operator owns Kafka's users (Kubernetes), the platform makes none: it
        # answers with the KafkaUser to apply (the same rights) and where its password will be.
        strimzi = platform.replace(kafka_users="strimzi", kafka_member_bootstrap="kafka.example.vn:9094")
        async with running_admin(strimzi) as (admin, _):
            answer = await admin.post(f"/admin/v1/agencies/{other}/kafka-credentials", headers=OPS)
            assert answer.status == 404, await answer.text()  # not an agency of this registry
            answer = await admin.post(f"/admin/v1/agencies/{provider}/kafka-credentials", headers=OPS)
            assert answer.status == 201, await answer.text()
            told = await answer.json()
        assert (told["username"], told["password"], told["password_secret"]) == (
            f"member-{provider}", None, f"member-{provider}")  # fmt: skip
        assert told["kafka_user"] == kafka_user(platform, provider), told["kafka_user"]
        assert told["bootstrap"] == "kafka.example.vn:9094"
        assert told["reply_secret"]
        assert not await _scram_users(platform, f"member-{provider}"), "revoked, and not made again"
    print(f"\nthe member user, its topics and its {len(acls(platform, provider))} ACLs: {granted_s:.2f}s")


async def _scram_users(settings: Settings, user: str) -> list[Any]:
    """``user``'s SCRAM credentials in Kafka (none: an empty list)."""
    admin = members._admin(settings)

    def described() -> list[Any]:
        try:
            found = admin.describe_user_scram_credentials([user])[user].result(timeout=30)
            return list(found.scram_credential_infos)
        except Exception as exc:
            if "RESOURCE_NOT_FOUND" in str(exc) or "not found" in str(exc).lower():
                return []
            raise

    return await asyncio.to_thread(described)
