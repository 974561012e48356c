"""A rebalance in the middle of a batch: what was folded of partitions taken away is
dropped, and their later records are not folded into stores that are gone (that raised
KeyError and killed the fold)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from es_orders.runtime import materializer as materializer_module
from es_orders.runtime.assignment import Assignment
from es_orders.runtime.clients import MaterializerConfig
from es_orders.runtime.materializer import Materializer, _Batch
from es_orders.runtime.partition import Phase


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
    consumed: int | None = None  # no checkpoint yet: nothing says it is read to its end
    phase = Phase.CATCHING_UP

    def close(self) -> None:
        pass


class _RebalancingConsumer:
    """Serves one slice of records from partitions 0 and 1, and while serving the next
    takes partition 1 away, as librdkafka's consume does when a rebalance callback runs."""

    def __init__(self, assignment: Assignment) -> None:
        self._assignment = assignment
        self.calls = 0
        self.asked: list[int] = []

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.calls += 1
        self.asked.append(num_messages)
        if self.calls == 1:
            return [_Record(0, 1), _Record(1, 1), _Record(1, 2)][:num_messages]
        if self.calls == 2:
            self._assignment.on_lost(None, [TopicPartition("events", 1)])
            return [_Record(0, 2), _Record(1, 3)]
        return []


class _Folding:
    """A materializer holding partitions 0 and 1, whose fold only records what it is given
    (no stores, no broker), and whose checkpoints are kept in ``checkpointed``."""

    def __init__(self, config: MaterializerConfig) -> None:
        self.told: list[bool] = []
        self.folded: list[tuple[int, int]] = []
        self.checkpointed: list[_Batch] = []
        self.materializer = materializer = Materializer(config, publish=lambda _status: None)
        self.assignment = Assignment(
            config,
            None,
            materializer.cache,
            materializer.counters,
            changed=self.told.append,
            cancelled=lambda: False,
        )
        self.assignment.partitions = {0: _Held(), 1: _Held()}  # type: ignore[dict-item]
        materializer._assignment = self.assignment
        materializer._preload = lambda _records: None  # type: ignore[method-assign,assignment]
        materializer._tell = lambda _now: None  # type: ignore[method-assign,assignment]
        materializer._fold = self._fold  # type: ignore[method-assign]
        materializer._checkpoint = self.checkpointed.append  # type: ignore[method-assign,assignment]

    def _fold(self, records: list[Any], batch: _Batch) -> None:
        for record in records:
            self.folded.append((record.partition(), record.offset()))
            batch.last[record.partition()] = record.offset()
            batch.changed.setdefault(record.partition(), {})
        batch.records += len(records)


def test_what_a_batch_folded_of_a_partition_taken_away_is_dropped(tmp_path: Path) -> None:
    folding = _Folding(MaterializerConfig("events", "state", None, "group", tmp_path, {}))
    consumer: Any = _RebalancingConsumer(folding.assignment)

    folding.materializer._batch(consumer, _Record(1, 0))

    # The first slice was folded before the rebalance; the second holds nothing of 1.
    assert folding.folded == [(1, 0), (0, 1), (1, 1), (1, 2), (0, 2)]
    (batch,) = folding.checkpointed
    assert batch.last == {0: 2}
    assert list(batch.changed) == [0]
    assert list(folding.assignment.partitions) == [0]
    assert folding.told == [True], "the release is told at once"


def test_a_batch_never_folds_more_than_max_batch_records(tmp_path: Path) -> None:
    config = MaterializerConfig("events", "state", None, "group", tmp_path, {}, max_batch=3)
    folding = _Folding(config)
    consumer: Any = _RebalancingConsumer(folding.assignment)

    folding.materializer._batch(consumer, _Record(1, 0))

    assert consumer.asked == [2]  # the first record and two more: three in all
    assert len(folding.folded) == 3


class _RevokingAtTheEnd(_RebalancingConsumer):
    """Has nothing more after the first slice, and takes partition 1 away while saying so."""

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.calls += 1
        if self.calls == 1:
            return [_Record(0, 1), _Record(1, 1)]
        self._assignment.on_lost(None, [TopicPartition("events", 1)])
        return []


def test_a_partition_taken_away_by_the_batch_s_last_consume_is_not_checkpointed(
    tmp_path: Path,
) -> None:
    folding = _Folding(MaterializerConfig("events", "state", None, "group", tmp_path, {}))
    consumer: Any = _RevokingAtTheEnd(folding.assignment)

    folding.materializer._batch(consumer, _Record(1, 0))

    assert folding.folded == [(1, 0), (0, 1), (1, 1)]
    (batch,) = folding.checkpointed
    assert batch.last == {0: 1}, "partition 1's store is closed: it must not be checkpointed"


def test_a_batch_that_changed_many_orders_is_checkpointed_before_max_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(materializer_module, "_MAX_CHANGED", 3)
    folding = _Folding(MaterializerConfig("events", "state", None, "group", tmp_path, {}))
    changed: dict[str, Any] = {}

    def fold(records: list[Any], batch: _Batch) -> None:
        for record in records:  # every record a new order
            changed[f"o{record.offset()}-{record.partition()}"] = None
        batch.changed[0] = changed
        batch.last[0] = records[-1].offset()
        batch.records += len(records)

    folding.materializer._fold = fold  # type: ignore[method-assign]
    consumer: Any = _RebalancingConsumer(folding.assignment)

    folding.materializer._batch(consumer, _Record(1, 0))

    assert consumer.calls == 1, "the second slice waits for the next batch"
    (batch,) = folding.checkpointed
    assert batch.changed_states == 4
