"""Helpers for tests that run a materializer in-process against the session broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from es_orders.codec import state_to_dict
from es_orders.kafka.admin import TopicSpec, ensure_topics
from es_orders.projection import Stored, fold_record
from es_orders.runtime.clients import MaterializerConfig
from es_orders.runtime.materializer import Materializer
from es_orders.runtime.status import StatusBoard
from es_orders.runtime.view import MaterializedView
from tests.vectors import VectorRecord, normalize_state


def create_topics(kafka_config: dict[str, Any], prefix: str, partitions: int = 3) -> dict[str, str]:
    names = {"events": f"{prefix}-events", "state": f"{prefix}-state", "dlq": f"{prefix}-dlq"}
    compact = {"cleanup.policy": "compact", "retention.ms": "-1"}
    keep = {"cleanup.policy": "delete", "retention.ms": "-1"}
    ensure_topics(
        kafka_config,
        [
            TopicSpec(names["events"], partitions, 1, keep),
            TopicSpec(names["state"], partitions, 1, compact),
            TopicSpec(names["dlq"], partitions, 1, keep),
        ],
    )
    return names


def materializer_config(
    kafka_config: dict[str, Any], topics: dict[str, str], state_dir: Path, group: str
) -> MaterializerConfig:
    return MaterializerConfig(
        source_topic=topics["events"],
        changelog_topic=topics["state"],
        dlq_topic=topics["dlq"],
        group_id=group,
        state_dir=state_dir,
        kafka=dict(kafka_config),
    )


def produce(kafka_config: dict[str, Any], topic: str, records: Iterable[VectorRecord]) -> int:
    """Each record to the partition the Java client's murmur2 gives its key, as es-orders'
    producers place them (librdkafka's default, CRC32, would not): an instance holding
    some partitions looks an order up in that one partition."""
    producer = Producer(
        {
            **kafka_config,
            "enable.idempotence": True,
            "linger.ms": 20,
            "partitioner": "murmur2_random",
        }
    )
    count = 0
    for record in records:
        while True:
            try:
                producer.produce(
                    topic,
                    key=record.key,
                    value=record.value,
                    headers=list(record.headers.items()),
                    timestamp=record.timestamp_ms,
                )
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
    assert producer.flush(60) == 0
    return count


def read_all(kafka_config: dict[str, Any], topic: str, partitions: int = 3) -> list[Any]:
    """Every record of ``topic`` from the start to the end (fetch EOF), without a group."""
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": "reader",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: list[Any] = []
    ended: set[int | None] = set()
    deadline = time.monotonic() + 60
    while len(ended) < partitions and time.monotonic() < deadline:
        for message in consumer.consume(1000, timeout=0.5):
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                ended.add(message.partition())
            elif error is None:
                records.append(message)
    consumer.close()
    assert len(ended) == partitions, "did not reach the end of every partition"
    return records


class RunningMaterializer:
    """A materializer on a background thread, stopped (leaving its group) on exit, with
    the status board and the view a service would read it through."""

    def __init__(self, config: MaterializerConfig) -> None:
        self.board = StatusBoard(config.state_dir, config.group_id, config.source_topic, 1)
        self.board.started(0, 0)
        self.materializer = Materializer(config, publish=self.board.update)
        self.view = MaterializedView(self.board, config.partitions, history=config.history)
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.materializer.run()
        except BaseException as exc:  # surfaced by wait_until
            self.failure = exc

    def __enter__(self) -> RunningMaterializer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.materializer.stop()
        self._thread.join(30)
        assert not self._thread.is_alive(), "materializer did not stop within 30 s"

    def wait_until(self, condition: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.failure is not None:
                raise AssertionError("materializer failed") from self.failure
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"condition not met in {timeout} s: {self.view.readiness()}")


def expected_fold(records: list[VectorRecord]) -> dict[str, dict[str, Any]]:
    """The fold of every record exactly once, in log order per key (per partition)."""
    stored: dict[str, Stored] = {}
    for offset, record in enumerate(records):
        folded = fold_record(record.key, record.value, record.timestamp_ms, offset, stored.get)
        if folded.stored is not None:
            stored[folded.stored.state.id] = folded.stored
    return {oid: normalize_state(state_to_dict(s.state)) for oid, s in stored.items()}
