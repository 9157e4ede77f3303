"""Every topic of the platform, with its partitions and configs, in one place.

The parts create the topics they use when they start (idempotently, see
:func:`broker.kafka.admin.ensure_topics`), and ``deploy/k8s/topics.py``
declares them all to Strimzi: both read them from :class:`Topics`, so the
two cannot drift. Names come from :class:`broker.model.envelope.Names` and
the settings (``NDXP_TOPIC_PREFIX``, ``NDXP_TX_TOPIC`` …).
"""

from __future__ import annotations

from broker.contracts.catalog import Catalog, Effects
from broker.kafka.admin import TopicSpec
from broker.model.documents import EXCHANGES_PARTITIONS, MAX_ASYNC_TTL_MS
from broker.settings import Settings

REQUEST_PARTITIONS = 2
"""Partitions of a provider's lookups topic, created by the gateway or the adapter, whichever starts
first: two adapter instances can share a provider's lookups, and a provider that needs more adds
partitions with Kafka's own tool (decision 0013; every fetch names every partition, so fewer is
cheaper)."""
WRITE_REQUEST_PARTITIONS = 1
"""Partitions of a provider's writes topic: its adapter runs one transaction at a time, so more would
only make every fetch name more partitions (decision 0013)."""
TX_PARTITIONS = 4
"""Partitions of the transaction topic (the counter's parallelism)."""
DATA_PARTITIONS = 4
"""Partitions of a provider's changes topic (``<prefix>.data.<provider>``)."""
REPLY_PARTITIONS = 3
"""Partitions of a gateway worker's reply topic: leaders on several brokers, so that a reply always
has one with a live leader to go to (:mod:`broker.kafka.routing`)."""
WRITE_REPLY_PARTITION = 0
"""The reply topic's partition for writes' replies, which adapters write in Kafka transactions; the
lookups' replies go to the others. A ``read_committed`` reader sees nothing of a partition past an
open transaction's first record, so a lookup's reply behind a write's would wait for that whole
transaction."""
EVENT_PARTITIONS = 4
"""Partitions of an event type's topic."""
_HOUR_MS = 3600 * 1000
CHANGES_RETENTION_DAYS = 10 * 366
"""The registry's change log is evidence: who changed what, kept ten years."""


class Topics:
    """The topic specs of one platform (its settings)."""

    __slots__ = ("settings",)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def tx(self) -> TopicSpec:
        """Transaction records of every exchange, publication and delivery."""
        return TopicSpec(name=self.settings.tx_topic, partitions=TX_PARTITIONS)

    def tx_dlq(self) -> TopicSpec:
        """Transaction records the counter cannot read."""
        return TopicSpec(name=f"{self.settings.tx_topic}.dlq")

    def stats(self) -> TopicSpec:
        """The counter's counts: compacted, one record per key."""
        return TopicSpec(
            name=self.settings.stats_topic,
            partitions=1,
            configs={"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"},
        )

    def seen_batches(self) -> TopicSpec:
        """The exchange ids the counter counted, one message per batch, kept as long as it dedupes."""
        retention = str(self.settings.dedupe_retention_hours * _HOUR_MS)
        return TopicSpec(
            name=f"{self.settings.stats_topic}.seen-batches",
            configs={"cleanup.policy": "delete", "retention.ms": retention},
        )

    def exchanges(self) -> TopicSpec:
        """Stored exchanges: compacted (latest document per exchange) and deleted by time.

        Compaction waits for the longest async wait (``min.compaction.lag.ms``), so that an
        exchange's pending document is never compacted away before the exchange is finished.
        """
        return TopicSpec(
            name=self.settings.exchanges_topic,
            partitions=EXCHANGES_PARTITIONS,
            configs={
                "cleanup.policy": "compact,delete",
                "retention.ms": str(self.settings.exchanges_retention_hours * _HOUR_MS),
                "min.compaction.lag.ms": str(MAX_ASYNC_TTL_MS + _HOUR_MS),
                "segment.ms": str(_HOUR_MS),
            },
        )

    def audit_leaves(self) -> TopicSpec:
        """The exchange log of the transaction topic: its leaves in the tree's order (one partition),
        kept forever (the evidence)."""
        return TopicSpec(name=f"{self.settings.tx_topic}.log", partitions=1, configs={"retention.ms": "-1"})

    def audit_checkpoints(self) -> TopicSpec:
        """The log's signed checkpoints, keyed by tree size: compacted, kept forever."""
        return TopicSpec(
            name=f"{self.settings.tx_topic}.log.checkpoints",
            partitions=1,
            configs={"cleanup.policy": "compact", "retention.ms": "-1"},
        )

    def registry(self) -> TopicSpec:
        """The live registry: one record per document, compacted (the latest of each is the state)."""
        return TopicSpec(
            name=self.settings.registry_topic,
            partitions=1,
            configs={"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"},
        )

    def registry_changes(self) -> TopicSpec:
        """The registry's change log: every change and every refused attempt, kept for years."""
        return TopicSpec(
            name=f"{self.settings.registry_topic}.changes",
            partitions=1,
            configs={"cleanup.policy": "delete", "retention.ms": str(CHANGES_RETENTION_DAYS * 24 * _HOUR_MS)},
        )

    def presence(self) -> TopicSpec:
        """Gateway instances' beats (each worker's, once a second): who is alive to share the limits
        of the registry's clients (named after the registry: the gateways that serve it)."""
        return TopicSpec(
            name=f"{self.settings.registry_topic}.gateways",
            partitions=1,
            configs={"retention.ms": str(_HOUR_MS)},
        )

    def callbacks_dlq(self) -> TopicSpec:
        """Callbacks that could not be delivered after every attempt."""
        return TopicSpec(name=f"{self.settings.exchanges_topic}.callbacks.dlq")

    def requests(self, provider: str) -> list[TopicSpec]:
        """A provider's two request topics: its lookups' and its writes' (each with every service)."""
        names = self.settings.names
        return [
            TopicSpec(
                name=names.requests(provider, write=write),
                partitions=WRITE_REQUEST_PARTITIONS if write else REQUEST_PARTITIONS,
            )
            for write in (False, True)
        ]

    def dlq(self, provider: str) -> TopicSpec:
        """Requests to ``provider`` that its adapter cannot decode."""
        return TopicSpec(name=self.settings.names.dlq(provider))

    def data(self, provider: str) -> TopicSpec:
        """The changes made by ``provider``'s write-effect services."""
        return TopicSpec(name=self.settings.names.data(provider), partitions=DATA_PARTITIONS)

    def reply(self, topic: str) -> TopicSpec:
        """A gateway worker's own reply topic (replies are read at once: an hour is plenty)."""
        return TopicSpec(name=topic, partitions=REPLY_PARTITIONS, configs={"retention.ms": str(_HOUR_MS)})

    def events(self, catalog: Catalog, provider: str | None = None) -> list[TopicSpec]:
        """The topics of every event type (of ``provider``), kept ``events_retention_hours``; the
        gateway and the publishing adapter create them, whichever starts first."""
        retention = str(self.settings.events_retention_hours * _HOUR_MS)
        return [
            TopicSpec(
                name=self.settings.names.events(p, t),
                partitions=EVENT_PARTITIONS,
                configs={"retention.ms": retention},
            )
            for p, t in catalog.events
            if provider in (None, p)
        ]

    def of_provider(self, catalog: Catalog, provider: str) -> list[TopicSpec]:
        """What a provider's adapter uses: its request topics, its DLQ, and for writes its changes."""
        services = catalog.of_provider(provider)
        out = [self.dlq(provider), *self.requests(provider)]
        if any(s.effects is Effects.WRITE for s in services):
            out.append(self.data(provider))
        return out

    def every(self, catalog: Catalog) -> list[TopicSpec]:
        """Every topic of the platform (reply topics excepted: each gateway worker creates and
        deletes its own)."""
        out = [
            self.tx(),
            self.tx_dlq(),
            self.stats(),
            self.seen_batches(),
            self.exchanges(),
            self.callbacks_dlq(),
            self.registry(),
            self.registry_changes(),
            self.presence(),
            self.audit_leaves(),
            self.audit_checkpoints(),
        ]
        for provider in catalog.providers():
            out.extend(self.of_provider(catalog, provider))
        out.extend(self.events(catalog))
        return out
