"""Fresh topic sets for each phase, and a fast producer of the workload into them."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from benchmarks.errors import BenchError
from es_orders.codec import encode_event
from es_orders.config import Settings
from es_orders.domain import OrderCreated
from es_orders.kafka.admin import TopicSpec, ensure_topics, topic_specs

log = logging.getLogger(__name__)

_FLUSH_TIMEOUT = 120.0
# quixstreams names the changelog of a dataframe's default store like this; creating it
# ourselves keeps its configs explicit (Tansu reports only explicit configs).
_QUIX_STORE = "default"
# Orders with ids starting so mark "processing has resumed" for the quixstreams app.
SENTINEL_PREFIX = b"bench-sentinel"


@dataclass(frozen=True, slots=True)
class TopicSet:
    """The topics one service (or one quixstreams app) of a phase works on."""

    events: str
    partitions: int

    @property
    def state(self) -> str:
        return f"{self.events}-state"

    @property
    def dlq(self) -> str:
        return f"{self.events}-dlq"

    def settings(self, bootstrap_servers: str) -> Settings:
        """Settings naming these topics; only the topic fields matter to the bench."""
        return Settings(
            bootstrap_servers=bootstrap_servers,
            events_topic=self.events,
            state_topic=self.state,
            dlq_topic=self.dlq,
            partitions=self.partitions,
        )


def quix_changelog_topic(group: str, events_topic: str) -> str:
    """The changelog quixstreams uses for a stateful dataframe on ``events_topic``."""
    return f"changelog__{group}--{events_topic}--{_QUIX_STORE}"


def create_topic_set(bootstrap_servers: str, topics: TopicSet) -> None:
    """Create the events, changelog and dead-letter topics es-orders' services use."""
    settings = topics.settings(bootstrap_servers)
    ensure_topics(settings.kafka_config(), topic_specs(settings))


def create_quix_changelog(bootstrap_servers: str, topics: TopicSet, group: str) -> str:
    """Create quixstreams' changelog for ``group`` with explicit configs; its name."""
    name = quix_changelog_topic(group, topics.events)
    config = {"cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1"}
    spec = TopicSpec(name, topics.partitions, 1, config)
    ensure_topics({"bootstrap.servers": bootstrap_servers}, [spec])
    return name


def produce(bootstrap_servers: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> int:
    """Produce ``records`` (key, value), each to its key's partition; see ``produce_to``."""
    return produce_to(bootstrap_servers, topic, ((k, v, None) for k, v in records))


def produce_to(
    bootstrap_servers: str, topic: str, records: Iterable[tuple[bytes, bytes, int | None]]
) -> int:
    """Produce (key, value, partition or None) records; wait for all acknowledgements.

    Returns the count. Idempotent, so retries never reorder the versions of an order;
    batched, because the workload is produced before a measure starts.
    """
    failures: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        # The key's partition as the services' producers (and the Java client) choose it.
        "partitioner": "murmur2_random",
    }
    producer = Producer(config)
    started = time.monotonic()
    count = 0
    try:
        for key, value, partition in records:
            # librdkafka's "unassigned" partition: the partitioner picks by key.
            target = -1 if partition is None else partition
            while True:
                try:
                    producer.produce(topic, value, key, target, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)  # the local queue is full: let deliveries drain it
            count += 1
            if count % 10_000 == 0:
                producer.poll(0)
    except KafkaException as exc:
        raise BenchError(f"cannot produce to {topic}: {exc}") from exc
    finally:
        left = producer.flush(_FLUSH_TIMEOUT)
    if left or failures:
        first = failures[0] if failures else "flush timed out"
        raise BenchError(f"{left + len(failures)} records to {topic} not acknowledged: {first}")
    log.info(
        "workload produced topic=%s records=%d seconds=%.1f",
        topic,
        count,
        time.monotonic() - started,
    )
    return count


def sentinel_records(partitions: int) -> list[tuple[bytes, bytes, int | None]]:
    """One new order per partition, each produced to that partition, keyed by its id."""
    at = datetime.now(UTC)
    records: list[tuple[bytes, bytes, int | None]] = []
    for partition in range(partitions):
        order_id = f"{SENTINEL_PREFIX.decode()}-{partition}"
        event = OrderCreated(str(uuid.uuid4()), order_id, 1, at, "u", "p", 1, 1)
        records.append((order_id.encode(), encode_event(event), partition))
    return records
