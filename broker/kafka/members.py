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


@dataclass(frozen=True, slots=True)
class Grant:
    """One right of a member user: a resource (``topic``, ``group``, ``transactionalId``), its name,
    whether the name is a prefix, and one operation (``Read``, ``Write``, ``Describe``)."""

    resource: str
    name: str
    prefix: bool
    operation: str


def grants(settings: Settings, provider: str) -> list[Grant]:
    """The rights of ``provider``'s member user, in one place: Kafka's ACLs (``acls``, made through
    the Admin API) and Strimzi's ``KafkaUser`` (``kafka_user``, deploy/k8s/users.py) both come from
    this list."""
    names = settings.names
    req, events, txn = (
        f"{names.prefix}.req.{provider}.",
        f"{names.prefix}.events.{provider}.",
        f"{names.adapter_group(provider)}.",
    )
    return [
        Grant("topic", req, True, "Read"),
        Grant("topic", req, True, "Describe"),
        Grant("group", names.adapter_group(provider), False, "Read"),
        Grant("topic", names.reply_prefix, True, "Write"),
        Grant("topic", settings.exchanges_topic, False, "Write"),
        Grant("topic", names.data(provider), False, "Write"),
        Grant("topic", names.data(provider), False, "Describe"),
        Grant("topic", names.dlq(provider), False, "Write"),
        Grant("topic", names.dlq(provider), False, "Describe"),
        Grant("topic", events, True, "Write"),
        Grant("topic", events, True, "Describe"),
        Grant("topic", settings.tx_topic, False, "Write"),
        Grant("transactionalId", txn, True, "Write"),
        Grant("transactionalId", txn, True, "Describe"),
    ]  # fmt: skip


def acls(settings: Settings, provider: str) -> list[Any]:
    """The ACL bindings of ``provider``'s member user (confluent-kafka's AclBinding)."""
    ka = _ka()
    kinds = {"topic": ka.ResourceType.TOPIC, "group": ka.ResourceType.GROUP,
             "transactionalId": ka.ResourceType.TRANSACTIONAL_ID}  # fmt: skip
    who = f"User:{member_user(provider)}"
    allow = ka.AclPermissionType.ALLOW
    return [
        ka.AclBinding(
            kinds[g.resource],
            g.name,
            ka.ResourcePatternType.PREFIXED if g.prefix else ka.ResourcePatternType.LITERAL,
            who,
            "*",
            ka.AclOperation[g.operation.upper()],
            allow,
        )
        for g in grants(settings, provider)
    ]


def kafka_user(settings: Settings, provider: str, cluster: str = "ndxp") -> dict[str, Any]:
    """``provider``'s member user as a Strimzi ``KafkaUser`` (SCRAM-SHA-512, simple authorization):
    where Strimzi's User Operator owns Kafka's users, the same rights as ``acls``. The operator
    writes the password to a Secret of the user's name (key ``password``)."""
    rules: dict[tuple[str, str, bool], list[str]] = {}
    for g in grants(settings, provider):
        rules.setdefault((g.resource, g.name, g.prefix), []).append(g.operation)
    return {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaUser",
        "metadata": {"name": member_user(provider), "labels": {"strimzi.io/cluster": cluster}},
        "spec": {
            "authentication": {"type": "scram-sha-512"},
            "authorization": {
                "type": "simple",
                "acls": [
                    {
                        "resource": {
                            "type": kind,
                            "name": name,
                            "patternType": "prefix" if prefix else "literal",
                        },
                        "operations": ops,
                        "host": "*",
                        "type": "allow",
                    }
                    for (kind, name, prefix), ops in rules.items()
                ],
            },
        },
    }


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


async def grant(settings: Settings, provider: str) -> Credentials:
    """Create (or give a new password to) ``provider``'s member user and its ACLs, after the topics
    its adapter uses and may not create itself (its dead letters, its changes, its request topics)."""
    await ensure_member_topics(settings, provider)
    return await asyncio.to_thread(_grant, settings, provider)


async def ensure_member_topics(settings: Settings, provider: str) -> None:
    """The topics a member's adapter uses and may not create itself."""
    topics = Topics(settings)
    await ensure_topics(settings, [topics.dlq(provider), topics.data(provider), *topics.requests(provider)])


async def revoke(settings: Settings, provider: str) -> None:
    """Remove ``provider``'s member user and every ACL of it (none there: no error)."""
    await asyncio.to_thread(_revoke, settings, provider)
