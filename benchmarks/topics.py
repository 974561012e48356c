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
    producer = _Producer(bootstrap_servers, topic, {})
    try:
        return producer.send(records)
    finally:
        producer.close()


class HeldRecords:
    """Records produced in a Kafka transaction left open until ``release``.

    A ``read_committed`` consumer (librdkafka's default, and so the services') stops
    before an open transaction: it sees the topic as empty, reads to its end, and its
    partitions count as caught up. ``release`` commits, and every record shows at once.
    A fold can so start on a backlog with its consumer group already settled: a second
    fold worker joins seconds after the first, and the rebalance that follows is not the
    fold. Use as a context manager: a transaction never released is aborted.
    """

    # Long enough to start a service and let its group settle; at most the broker's
    # transaction.max.timeout.ms (Kafka's default: 15 minutes).
    _TIMEOUT_MS = 600_000

    def __init__(
        self, bootstrap_servers: str, topic: str, records: Iterable[tuple[bytes, bytes]]
    ) -> None:
        extra = {
            "transactional.id": f"{topic}-held-{uuid.uuid4().hex[:8]}",
            "transaction.timeout.ms": self._TIMEOUT_MS,
        }
        self._producer = _Producer(bootstrap_servers, topic, extra)
        self._open = False
        try:
            self._producer.transact("init_transactions")
            self._producer.transact("begin_transaction")
            self._open = True
            self.count = self._producer.send((k, v, None) for k, v in records)
        except BaseException:
            self.close()
            raise

    def release(self) -> float:
        """Commit: the records become visible. The wall-clock time the commit returned."""
        self._producer.transact("commit_transaction")
        self._open = False
        return time.time()

    def close(self) -> None:
        try:
            if self._open:
                self._open = False
                self._producer.transact("abort_transaction")
        finally:
            self._producer.close()

    def __enter__(self) -> HeldRecords:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class _Producer:
    """A fast idempotent producer to one topic that fails loudly (``BenchError``)."""

    def __init__(self, bootstrap_servers: str, topic: str, extra: dict[str, Any]) -> None:
        self._topic = topic
        self._failures: list[KafkaError] = []
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            # The key's partition as the services' producers (and the Java client) choose it.
            "partitioner": "murmur2_random",
            **extra,
        }
        self._producer = Producer(config)

    def _on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._failures.append(error)

    def send(self, records: Iterable[tuple[bytes, bytes, int | None]]) -> int:
        """Produce (key, value, partition or None) records and wait for every acknowledgement."""
        topic, producer = self._topic, self._producer
        started = time.monotonic()
        count = 0
        try:
            for key, value, partition in records:
                # librdkafka's "unassigned" partition: the partitioner picks by key.
                target = -1 if partition is None else partition
                while True:
                    try:
                        producer.produce(topic, value, key, target, on_delivery=self._on_delivery)
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
        if left or self._failures:
            first = self._failures[0] if self._failures else "flush timed out"
            raise BenchError(
                f"{left + len(self._failures)} records to {topic} not acknowledged: {first}"
            )
        log.info(
            "workload produced topic=%s records=%d seconds=%.1f",
            topic,
            count,
            time.monotonic() - started,
        )
        return count

    def transact(self, step: str) -> None:
        """Run a transaction step (``init_transactions``, ``commit_transaction``, ...)."""
        method = getattr(self._producer, step)
        try:
            method() if step == "begin_transaction" else method(_FLUSH_TIMEOUT)
        except KafkaException as exc:
            raise BenchError(f"{step} on {self._topic} failed: {exc}") from exc

    def close(self) -> None:
        self._producer.flush(0)


def sentinel_records(partitions: int) -> list[tuple[bytes, bytes, int | None]]:
    """One new order per partition, each produced to that partition, keyed by its id."""
    at = datetime.now(UTC)
    records: list[tuple[bytes, bytes, int | None]] = []
    for partition in range(partitions):
        order_id = f"{SENTINEL_PREFIX.decode()}-{partition}"
        event = OrderCreated(str(uuid.uuid4()), order_id, 1, at, "u", "p", 1, 1)
        records.append((order_id.encode(), encode_event(event), partition))
    return records
