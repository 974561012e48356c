"""A rebalance in the middle of gathering a batch: records of partitions taken away are
dropped, not folded into stores that are gone (that raised KeyError and killed the fold)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from es_orders.runtime.assignment import Assignment
from es_orders.runtime.clients import MaterializerConfig
from es_orders.runtime.materializer import Materializer


class _Record:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def error(self) -> None:
        return None


class _Held:
    def close(self) -> None:
        pass


class _RebalancingConsumer:
    """Serves one slice of records from partitions 0 and 1, and while serving the next
    takes partition 1 away, as librdkafka's consume does when a rebalance callback runs."""

    def __init__(self, assignment: Assignment) -> None:
        self._assignment = assignment
        self.calls = 0

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.calls += 1
        if self.calls == 1:
            return [_Record(0, 1), _Record(1, 1), _Record(1, 2)]
        if self.calls == 2:
            self._assignment.on_lost(None, [TopicPartition("events", 1)])
            return [_Record(0, 2)]
        return []


def test_records_of_a_partition_taken_away_while_gathering_are_dropped(tmp_path: Path) -> None:
    config = MaterializerConfig("events", "state", None, "group", tmp_path, {})
    told: list[bool] = []
    materializer = Materializer(config, publish=lambda _status: None)
    assignment = Assignment(
        config,
        None,
        materializer.cache,
        materializer.counters,
        changed=told.append,
        cancelled=lambda: False,
    )
    assignment.partitions = {0: _Held(), 1: _Held()}  # type: ignore[dict-item]
    materializer._assignment = assignment
    consumer: Any = _RebalancingConsumer(assignment)

    batch = materializer._gather(consumer, _Record(1, 0))

    assert [(m.partition(), m.offset()) for m in batch] == [(0, 1), (0, 2)]
    assert list(assignment.partitions) == [0]
    assert told == [True], "the release is told at once"
