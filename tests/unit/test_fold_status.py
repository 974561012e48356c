"""The pieces between fold workers and readers: the cache, the status board, the store's
generation, and the frames a worker's statuses cross the pipe in."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from es_orders.codec import encode_state
from es_orders.domain import OrderState, OrderStatus
from es_orders.projection import Stored
from es_orders.runtime.cache import ENTRY_OVERHEAD, StateCache
from es_orders.runtime.clients import Counters, MaterializerConfig
from es_orders.runtime.partition import AssignedPartition, store_path
from es_orders.runtime.restore import RestoreCancelledError, restore_partitions
from es_orders.runtime.status import (
    PartitionStatus,
    StatusBoard,
    WorkerStatus,
    decode_status,
    encode_status,
)
from es_orders.runtime.store import PartitionStore, StoreGoneError, StoreReader
from es_orders.runtime.view import MaterializedView
from es_orders.runtime.views import PartitionNotHeldError
from es_orders.runtime.workers import FoldWorkers, _Child, _write_frames

_AT = datetime(2026, 11, 30, tzinfo=UTC)


def _stored(order_id: str, version: int = 1) -> Stored:
    state = OrderState(order_id, "u", "p", 1, 100, OrderStatus.OPEN, version, _AT, _AT)
    return Stored(state, version)


def test_the_cache_drops_the_least_recently_written_states_beyond_its_budget() -> None:
    per_entry = 200 + ENTRY_OVERHEAD
    cache = StateCache(limit_bytes=100 * per_entry)
    for n in range(150):
        cache.written(n % 2, {f"o{n}": _stored(f"o{n}")}, 200)
    cache.written(0, {"o0": _stored("o0", 2)}, 200)  # the oldest, written again
    assert cache.entries == 150
    dropped = cache.shrink()
    assert dropped == 150 - 90  # down to 90% of the budget
    assert cache.bytes <= cache.limit_bytes
    kept = {**cache.partition(0), **cache.partition(1)}
    assert "o0" in kept and "o149" in kept
    assert "o1" not in kept and "o2" not in kept
    assert cache.shrink() == 0


def test_a_batch_reads_what_the_cache_lacks_in_one_query(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    store = PartitionStore(path)
    store.checkpoint(
        [(f"o{n}", encode_state(_stored(f"o{n}", n + 1).state), n) for n in range(5)], 5, None
    )
    store.close()
    cache = StateCache(limit_bytes=2**20)
    part = AssignedPartition(0, path, cache)
    part.states["o0"] = _stored("o0", 1)
    part.preload({"o0", "o3", "o4", "missing"})
    assert sorted(part.states) == ["o0", "o3", "o4"]
    assert part.states["o3"].state.version == 4
    assert (cache.hits, cache.misses) == (1, 3)
    part.close()


def _status(index: int, *parts: tuple[int, str, int]) -> WorkerStatus:
    return WorkerStatus(
        index=index,
        pid=1000 + index,
        joined=True,
        partitions=tuple(PartitionStatus(n, phase, gen, 0.0) for n, phase, gen in parts),
        counters=Counters(consumed=10 * (index + 1)),
    )


def test_the_board_serves_each_partition_from_the_one_worker_that_holds_it(
    tmp_path: Path,
) -> None:
    board = StatusBoard(tmp_path, "g", "t", workers=2)
    assert not board.snapshot.readiness.ready
    board.started(0, 1000)
    board.started(1, 1001)
    board.update(msgspec.structs.replace(_status(0), joined=False))
    assert board.snapshot.readiness.waiting_for == ("group join and partition assignment",)
    board.update(_status(0, (0, "caught-up", 7), (1, "restoring", 8)))
    assert not board.snapshot.readiness.ready  # worker 1 has not joined yet
    board.update(_status(1, (2, "caught-up", 9)))
    snapshot = board.snapshot
    assert sorted(snapshot.readable) == [0, 2]  # a restoring partition is not read
    assert snapshot.readable[0].generation == 7
    assert snapshot.readiness.waiting_for == ("partition 1: restoring",)

    # Partition 2 moves to worker 0 before worker 1's revocation is heard of.
    board.update(_status(0, (0, "caught-up", 7), (1, "caught-up", 8), (2, "restoring", 9)))
    assert sorted(board.snapshot.readable) == [0, 1]
    assert "partition 2: moving between workers" in board.snapshot.readiness.waiting_for

    board.update(_status(1))
    board.update(_status(0, (0, "caught-up", 7), (1, "caught-up", 8), (2, "caught-up", 9)))
    assert board.snapshot.readiness.ready
    assert board.stats()["consumed"] == 30

    board.exited(0)  # whatever it held is held by nobody now
    assert board.snapshot.readable == {}
    assert board.snapshot.readiness.waiting_for[0] == "fold workers [0]: exited, being replaced"
    assert board.stats()["consumed"] == 30, "a worker's counts outlive it"
    board.started(0, 1002)
    assert board.stats()["workers"][0]["restarts"] == 1


def test_a_reader_opens_only_the_store_generation_it_was_told_of(tmp_path: Path) -> None:
    path = store_path(tmp_path, "g", "t", 0)
    store = PartitionStore(path)
    assert StoreReader(path, store.generation).get("x") is None
    with pytest.raises(StoreGoneError):
        StoreReader(path, store.generation + 1).get("x")
    with pytest.raises(StoreGoneError):
        StoreReader(tmp_path / "absent.sqlite", 1).get("x")
    assert PartitionStore(path).generation == store.generation  # kept across opens
    store.close()

    board = StatusBoard(tmp_path, "g", "t", workers=1)
    board.started(0, 1)
    board.update(_status(0, (0, "caught-up", store.generation + 1)))
    view = MaterializedView(board, partitions=1)
    with pytest.raises(PartitionNotHeldError):
        view.get("x")


def test_statuses_cross_the_pipe_whole_whatever_the_reads_split_them_into(
    tmp_path: Path,
) -> None:
    read_fd, write_fd = os.pipe()
    statuses = [_status(0, *[(n, "caught-up", n) for n in range(k)]) for k in range(20)]
    publish = _write_frames(write_fd)
    for status in statuses:
        publish(status)
    os.close(write_fd)
    seen: list[WorkerStatus] = []
    board = StatusBoard(tmp_path, "g", "t", workers=1)
    board.update = seen.append  # type: ignore[method-assign,assignment]
    workers = FoldWorkers(MaterializerConfig("e", "s", None, "g", tmp_path, {}), board, 1)
    child = _Child(0, None, read_fd)  # type: ignore[arg-type]
    while chunk := os.read(read_fd, 5):  # five bytes at a time: frames split anywhere
        child.buffer += chunk
        workers._take_frames(child)
    os.close(read_fd)
    assert seen == statuses
    assert not child.buffer
    assert decode_status(encode_status(statuses[3])) == statuses[3]


class _ChangelogRecord:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def error(self) -> None:
        return None

    def key(self) -> bytes:
        return f"o{self._offset}".encode()

    def value(self) -> bytes:
        return encode_state(_stored(f"o{self._offset}").state)

    def headers(self) -> list[tuple[str, bytes]]:
        return [("source-offset", str(self._offset).encode())]


class _EndlessChangelog:
    """A changelog partition that never ends: only a cancellation stops its restore."""

    def __init__(self) -> None:
        self.offset = 0
        self.unassigned = False

    def assign(self, _partitions: object) -> None:
        pass

    def unassign(self) -> None:
        self.unassigned = True

    def consume(self, num_messages: int, timeout: float) -> list[_ChangelogRecord]:
        self.offset += 10
        return [_ChangelogRecord(0, self.offset - 10 + n) for n in range(10)]


def test_a_stop_cancels_a_restore_and_the_next_one_goes_on_from_there(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p.sqlite")
    consumer: Any = _EndlessChangelog()
    calls = 0

    def cancelled() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    with pytest.raises(RestoreCancelledError):
        restore_partitions(consumer, "changelog", {0: store}, cancelled=cancelled)
    assert consumer.unassigned
    assert store.position().changelog == 30  # three fetches read and written
    assert store.count() == 30
    store.close()
