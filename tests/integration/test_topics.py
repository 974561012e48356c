"""Topics are created as specified, and records come back in order per key."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined,unused-ignore]

from es_orders.brokers import free_port
from es_orders.config import Settings
from es_orders.errors import BrokerError, TopicConfigError
from es_orders.kafka.admin import TopicSpec, ensure_topics, topic_specs
from es_orders.kafka.partitioner import partition_for

pytestmark = pytest.mark.integration


def _partition_counts(kafka_config: dict[str, Any]) -> dict[str, int]:
    metadata = AdminClient(kafka_config).list_topics(timeout=10)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def _topic_config(kafka_config: dict[str, Any], topic: str) -> dict[str, str]:
    resource = ConfigResource("topic", topic)
    # Keep the client referenced until the result is in: dropping it aborts the request.
    admin = AdminClient(kafka_config)
    entries = admin.describe_configs([resource])[resource].result(timeout=10)
    return {name: entry.value for name, entry in entries.items()}


def test_ensure_topics_creates_missing_topics_with_their_partitions_and_configs(
    kafka_config: dict[str, Any], topic_prefix: str
) -> None:
    specs = [
        TopicSpec(f"{topic_prefix}-one", 1),
        TopicSpec(f"{topic_prefix}-five", 5, config={"cleanup.policy": "compact"}),
    ]

    created = ensure_topics(kafka_config, specs)

    assert created == [spec.name for spec in specs]
    counts = _partition_counts(kafka_config)
    assert counts[f"{topic_prefix}-one"] == 1
    assert counts[f"{topic_prefix}-five"] == 5
    assert _topic_config(kafka_config, f"{topic_prefix}-five")["cleanup.policy"] == "compact"


def test_ensure_topics_twice_creates_nothing_the_second_time(
    kafka_config: dict[str, Any], topic_prefix: str
) -> None:
    specs = [TopicSpec(f"{topic_prefix}-events", 3)]
    assert ensure_topics(kafka_config, specs) == [f"{topic_prefix}-events"]

    assert ensure_topics(kafka_config, specs) == []
    assert _partition_counts(kafka_config)[f"{topic_prefix}-events"] == 3


def test_ensure_topics_refuses_a_topic_with_another_partition_count(
    kafka_config: dict[str, Any], topic_prefix: str
) -> None:
    name = f"{topic_prefix}-events"
    ensure_topics(kafka_config, [TopicSpec(name, 2)])

    with pytest.raises(TopicConfigError, match=f"'{name}' exists with 2 partitions, but 3"):
        ensure_topics(kafka_config, [TopicSpec(name, 3)])


def test_concurrent_ensure_topics_create_each_topic_exactly_once(
    kafka_config: dict[str, Any], topic_prefix: str
) -> None:
    specs = [TopicSpec(f"{topic_prefix}-{i}", 2) for i in range(4)]
    callers = 8
    barrier = threading.Barrier(callers)
    created: list[list[str]] = []
    failures: list[BaseException] = []

    def race() -> None:
        barrier.wait()
        try:
            created.append(ensure_topics(kafka_config, specs))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=race) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert failures == []
    assert sorted(name for names in created for name in names) == [spec.name for spec in specs]


def test_topic_specs_create_an_endless_event_log_and_compacted_changelogs(
    kafka_config: dict[str, Any], topic_prefix: str
) -> None:
    settings = Settings(
        bootstrap_servers=kafka_config["bootstrap.servers"],
        events_topic=f"{topic_prefix}-events",
        state_topic=f"{topic_prefix}-state",
        dlq_topic=f"{topic_prefix}-dlq",
        partitions=4,
    )

    ensure_topics(settings.kafka_config(), topic_specs(settings))

    counts = _partition_counts(kafka_config)
    topics = [
        settings.events_topic,
        settings.state_topic,
        settings.command_state_topic,
        settings.dlq_topic,
    ]
    assert [counts.get(topic) for topic in topics] == [4, 4, 4, 4]
    configs = {topic: _topic_config(kafka_config, topic) for topic in topics}
    for topic in (settings.events_topic, settings.dlq_topic):
        assert configs[topic]["cleanup.policy"] == "delete"
        assert configs[topic]["retention.ms"] == "-1"
    for topic in (settings.state_topic, settings.command_state_topic):
        assert configs[topic]["cleanup.policy"] == "compact"


def test_ensure_topics_without_a_reachable_cluster_raises_broker_error() -> None:
    unreachable = {"bootstrap.servers": f"127.0.0.1:{free_port()}"}

    with pytest.raises(BrokerError, match="cannot list the topics"):
        ensure_topics(unreachable, [TopicSpec("never-created", 1)], timeout=2)


def test_records_come_back_in_order_per_key_through_a_consumer_group(
    kafka_config: dict[str, Any], consumer_config: dict[str, Any], topic_prefix: str
) -> None:
    topic = f"{topic_prefix}-events"
    ensure_topics(kafka_config, [TopicSpec(topic, 3)])
    sent = [(f"order-{n % 4}", f"event-{n}") for n in range(12)]
    producer = Producer({**kafka_config, "acks": "all", "enable.idempotence": True})
    for key, value in sent:
        producer.produce(topic, key=key.encode(), value=value.encode())
    assert producer.flush(10) == 0, "every record acknowledged"

    received: dict[str, list[str]] = defaultdict(list)
    partition_of: dict[str, set[int | None]] = defaultdict(set)
    consumer = Consumer(consumer_config)
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    try:
        while sum(map(len, received.values())) < len(sent) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            raw_key, raw_value = message.key(), message.value()
            assert raw_key is not None
            assert raw_value is not None
            received[raw_key.decode()].append(raw_value.decode())
            partition_of[raw_key.decode()].add(message.partition())
    finally:
        consumer.close()

    expected: dict[str, list[str]] = defaultdict(list)
    for key, value in sent:
        expected[key].append(value)
    assert received == expected
    assert all(len(partitions) == 1 for partitions in partition_of.values())


def test_partition_for_places_keys_where_the_producer_does(
    kafka_config: dict[str, Any], topic_prefix: str
) -> None:
    topic = f"{topic_prefix}-seven"
    ensure_topics(kafka_config, [TopicSpec(topic, 7)])
    producer = Producer({**kafka_config, "partitioner": "murmur2_random"})
    placed: dict[bytes, int] = {}

    def delivered(error: Any, message: Any) -> None:
        assert error is None, error
        placed[message.key()] = message.partition()

    keys = [f"order-{n}".encode() for n in range(200)]
    for key in keys:
        producer.produce(topic, key=key, value=b"x", on_delivery=delivered)
    assert producer.flush(10) == 0

    assert placed == {key: partition_for(key, 7) for key in keys}
    assert len(set(placed.values())) == 7
