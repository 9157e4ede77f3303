"""What every part uses of Kafka, by concern.

- :mod:`~broker.kafka.boundary`: the typed boundary (Protocols of what the
  platform uses of aiokafka: :class:`Producer`, :class:`Consumer`, :class:`Record`);
- :mod:`~broker.kafka.clients`: producer, consumer and admin client factories
  with the platform's defaults and security settings; one poll;
- :mod:`~broker.kafka.admin`: topics (create idempotently, wait, delete, sweep);
- :mod:`~broker.kafka.topics`: every topic's spec, in one place;
- :mod:`~broker.kafka.transactions`: the one transaction helper (and its
  failure policy) that the counter, the keeper and the adapters share, and
  at-least-once offset bookkeeping;
- :mod:`~broker.kafka.service`: :class:`KafkaService`, the base of every
  part that runs a poll loop, and :class:`Reachability`.

Everything is re-exported here: ``from broker.kafka import make_producer``.
"""

from broker.errors import KafkaUnavailable
from broker.kafka.admin import (
    TopicSpec,
    cluster_brokers,
    delete_topics,
    ensure_topics,
    sweep_idle_topics,
    wait_for_topics,
)
from broker.kafka.boundary import (
    Batch,
    Consumer,
    ConsumerParams,
    Headers,
    Metadata,
    Producer,
    ProducerParams,
    Record,
    Sender,
    Written,
)
from broker.kafka.clients import (
    StickyPartitioner,
    admin_client,
    batches_to_end,
    bootstrap,
    consumer_lag,
    make_consumer,
    make_producer,
    metadata_client,
    poll,
    read_compacted,
    read_to_end,
    security,
    static_member,
    topic_partitions,
)
from broker.kafka.service import KafkaService, Reachability
from broker.kafka.topics import Topics
from broker.kafka.transactions import OffsetTracker, Outgoing, Transactions, send_all

__all__ = [
    "Batch",
    "Consumer",
    "ConsumerParams",
    "Headers",
    "KafkaService",
    "KafkaUnavailable",
    "Metadata",
    "OffsetTracker",
    "Outgoing",
    "Producer",
    "ProducerParams",
    "Reachability",
    "Record",
    "Sender",
    "StickyPartitioner",
    "TopicSpec",
    "Topics",
    "Transactions",
    "Written",
    "admin_client",
    "batches_to_end",
    "bootstrap",
    "cluster_brokers",
    "consumer_lag",
    "delete_topics",
    "ensure_topics",
    "make_consumer",
    "make_producer",
    "metadata_client",
    "poll",
    "read_compacted",
    "read_to_end",
    "security",
    "send_all",
    "static_member",
    "sweep_idle_topics",
    "topic_partitions",
    "wait_for_topics",
]
