"""The fold workers' stores as an ``OrderView``: interactive queries from HTTP threads."""

from __future__ import annotations

import heapq
from itertools import islice

from es_orders.kafka.partitioner import partition_for
from es_orders.runtime.status import StatusBoard
from es_orders.runtime.store import StoreGoneError
from es_orders.runtime.views import PartitionNotHeldError, Readiness


class MaterializedView:
    """Reads the committed checkpoints of every partition this instance's workers serve.

    Each read uses its thread's own read-only SQLite connection (WAL), so it never waits
    for a fold and never sees a partition's batch that is not checkpointed whole. Which
    partitions and which store files it reads comes from the status board's snapshot.
    """

    def __init__(self, board: StatusBoard, partitions: int) -> None:
        self._board = board
        self._partitions = partitions

    def get(self, order_id: str) -> bytes | None:
        readable = self._board.snapshot.readable
        for number, reader in readable.items():
            try:
                state = reader.get(order_id)
            except StoreGoneError as exc:
                # The worker that held it is replacing the file: it is not readable now.
                raise PartitionNotHeldError(number) from exc
            if state is not None:
                return state
        # "Does not exist" only from an instance that serves every partition: a producer
        # may place keys by another hash than the Java client's, so a miss in the
        # partition murmur2 names proves nothing while others are not served here.
        if len(readable) < self._partitions:
            likely = partition_for(order_id.encode(), self._partitions)
            raise PartitionNotHeldError(None if likely in readable else likely)
        return None

    def page(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        readable = self._board.snapshot.readable
        if not readable:
            raise PartitionNotHeldError(None)
        pages = []
        for number, reader in readable.items():
            try:
                pages.append(reader.page(after, limit))
            except StoreGoneError as exc:
                raise PartitionNotHeldError(number) from exc
        return list(islice(heapq.merge(*pages), limit))

    def readiness(self) -> Readiness:
        return self._board.snapshot.readiness

    def stats(self) -> dict[str, object]:
        return self._board.stats()
