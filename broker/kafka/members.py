"""Kafka credentials of a member's own adapter: a SCRAM user per provider, fenced by ACLs.

A provider that runs its adapter on its own premises connects to Kafka as
``member-<provider>`` (SCRAM-SHA-512 over TLS), never with the platform's
credentials. Its ACLs (Kafka's StandardAuthorizer) let it:

- read only its own request topics (``<prefix>.req.<provider>.*``) in its own
  consumer group (``<prefix>.adapter.<provider>``);
- write only what a provider writes: replies (the gateways' reply topics and
  the stored-exchanges topic, where every provider's replies travel; which
  provider sent a reply is for the platform to check there), its changes,
  events and dead letters (``<prefix>.data|events|dlq.<provider>``), the
  transaction records of the events it publishes, and its own transactional
  ids (``<prefix>.adapter.<provider>.*``).

Everything else (another provider's requests, the registry with its key
hashes and callback secrets, the counts) is refused by Kafka. Users and ACLs
are made with confluent-kafka's AdminClient (aiokafka has neither), off the
event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import secrets
from dataclasses import dataclass
from typing import Any

from broker.errors import KafkaUnavailable
from broker.kafka.admin import ensure_topics
from broker.kafka.topics import Topics
from broker.settings import Settings

MECHANISM = "SCRAM-SHA-512"
ITERATIONS = 8192


def member_user(provider: str) -> str:
    return f"member-{provider}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a member adapter connects with (the password is shown once, then only its hash is kept,
    by Kafka)."""

    username: str
    password: str
    mechanism: str = MECHANISM


def _ka() -> Any:
    """confluent-kafka's admin module (imported when used: only the management API needs it)."""
    return importlib.import_module("confluent_kafka.admin")


def _admin(settings: Settings) -> Any:
    conf: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap, "client.id": "ndxp-members"}
    protocol = settings.kafka_security_protocol
    conf["security.protocol"] = protocol
    if protocol.startswith("SASL"):
        conf.update({"sasl.mechanism": settings.kafka_sasl_mechanism,
                     "sasl.username": settings.kafka_sasl_username,
                     "sasl.password": settings.kafka_sasl_password})  # fmt: skip
    if settings.kafka_ssl_cafile is not None:
        conf["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    return _ka().AdminClient(conf)


def acls(settings: Settings, provider: str) -> list[Any]:
    """The ACL bindings of ``provider``'s member user."""
    ka = _ka()
    R, AclOperation = ka.ResourceType, ka.AclOperation

    names = settings.names
    who = f"User:{member_user(provider)}"
    prefixed, literal = ka.ResourcePatternType.PREFIXED, ka.ResourcePatternType.LITERAL
    grants: list[tuple[Any, str, Any, Any]] = [
        (R.TOPIC, f"{names.prefix}.req.{provider}.", prefixed, AclOperation.READ),
        (R.TOPIC, f"{names.prefix}.req.{provider}.", prefixed, AclOperation.DESCRIBE),
        (R.GROUP, names.adapter_group(provider), literal, AclOperation.READ),
        (R.TOPIC, names.reply_prefix, prefixed, AclOperation.WRITE),
        (R.TOPIC, settings.exchanges_topic, literal, AclOperation.WRITE),
        (R.TOPIC, names.data(provider), literal, AclOperation.WRITE),
        (R.TOPIC, names.data(provider), literal, AclOperation.DESCRIBE),
        (R.TOPIC, names.dlq(provider), literal, AclOperation.WRITE),
        (R.TOPIC, names.dlq(provider), literal, AclOperation.DESCRIBE),
        (R.TOPIC, f"{names.prefix}.events.{provider}.", prefixed, AclOperation.WRITE),
        (R.TOPIC, f"{names.prefix}.events.{provider}.", prefixed, AclOperation.DESCRIBE),
        (R.TOPIC, settings.tx_topic, literal, AclOperation.WRITE),
        (R.TRANSACTIONAL_ID, f"{names.adapter_group(provider)}.", prefixed, AclOperation.WRITE),
        (R.TRANSACTIONAL_ID, f"{names.adapter_group(provider)}.", prefixed, AclOperation.DESCRIBE),
    ]
    allow = ka.AclPermissionType.ALLOW
    return [ka.AclBinding(r, name, pattern, who, "*", op, allow) for r, name, pattern, op in grants]


def _wait(futures: dict[Any, Any] | list[Any], what: str) -> None:
    done = futures.values() if isinstance(futures, dict) else futures
    try:
        for f in done:
            f.result(timeout=30)
    except Exception as exc:
        raise KafkaUnavailable(f"{what}: {exc}") from exc


def _grant(settings: Settings, provider: str) -> Credentials:
    ka = _ka()
    admin = _admin(settings)
    creds = Credentials(member_user(provider), secrets.token_urlsafe(24))
    info = ka.ScramCredentialInfo(ka.ScramMechanism.SCRAM_SHA_512, ITERATIONS)
    upsert = ka.UserScramCredentialUpsertion(creds.username, info, creds.password.encode())
    _wait(admin.alter_user_scram_credentials([upsert]), f"creating the Kafka user {creds.username}")
    _wait(admin.create_acls(acls(settings, provider)), f"granting {creds.username}'s ACLs")
    return creds


def _revoke(settings: Settings, provider: str) -> None:
    ka = _ka()
    admin = _admin(settings)
    who = f"User:{member_user(provider)}"
    every = ka.AclBindingFilter(ka.ResourceType.ANY, None, ka.ResourcePatternType.ANY, who, None,
                                ka.AclOperation.ANY, ka.AclPermissionType.ANY)  # fmt: skip
    _wait(admin.delete_acls([every]), f"removing {who}'s ACLs")
    gone = ka.UserScramCredentialDeletion(member_user(provider), ka.ScramMechanism.SCRAM_SHA_512)
    try:
        _wait(admin.alter_user_scram_credentials([gone]), f"removing the Kafka user {member_user(provider)}")
    except KafkaUnavailable as exc:
        if "RESOURCE_NOT_FOUND" not in str(exc) and "not found" not in str(exc).lower():
            raise


async def grant(settings: Settings, provider: str, services: list[str] | None = None) -> Credentials:
    """Create (or give a new password to) ``provider``'s member user and its ACLs, after the topics
    its adapter uses and may not create itself (its dead letters, its changes, the request topics
    of ``services``)."""
    topics = Topics(settings)
    await ensure_topics(
        settings,
        [topics.dlq(provider), topics.data(provider), *(topics.request(provider, s) for s in services or [])],
    )
    return await asyncio.to_thread(_grant, settings, provider)


async def revoke(settings: Settings, provider: str) -> None:
    """Remove ``provider``'s member user and every ACL of it (none there: no error)."""
    await asyncio.to_thread(_revoke, settings, provider)
