"""The fold workers' stores as an ``OrderView``: interactive queries from HTTP threads."""

from __future__ import annotations

import heapq
from collections.abc import Collection
from itertools import islice

from es_orders.kafka.partitioner import partition_for
from es_orders.runtime.history import HistoryOffError, HistoryRebuildingError
from es_orders.runtime.status import StatusBoard
from es_orders.runtime.store import StoreGoneError, StoreReader
from es_orders.runtime.views import EventRow, HeldPartition, PartitionNotHeldError, Readiness


class MaterializedView:
    """Reads the committed checkpoints of every partition this instance's workers serve.

    Each read uses its thread's own read-only SQLite connection (WAL), so it never waits
    for a fold and never sees a partition's batch that is not checkpointed whole. Which
    partitions and which store files it reads comes from the status board's snapshot.
    """

    def __init__(self, board: StatusBoard, partitions: int, *, history: bool = False) -> None:
        self._board = board
        self._partitions = partitions
        self._history = history

    @property
    def partitions(self) -> int:
        return self._partitions

    def get(self, order_id: str) -> bytes | None:
        """The order's state from the partition murmur2 places its id in, as the producers
        do. Instances of a cluster each answer for their partitions only, so a miss there
        is "does not exist". An instance that serves every partition also looks in the
        others, for ids a producer placed by another hash."""
        found = self._locate(order_id)
        return None if found is None else found[2]

    def _locate(self, order_id: str) -> tuple[int, StoreReader, bytes] | None:
        """The partition whose store has the order, its reader, and the order's state
        (as ``get`` describes); None if the order does not exist."""
        readable = self._board.snapshot.readable
        number = partition_for(order_id.encode(), self._partitions)
        reader = readable.get(number)
        if reader is None:
            raise PartitionNotHeldError(number)
        state = self._read(number, reader, order_id)
        if state is not None:
            return number, reader, state
        if len(readable) < self._partitions:
            return None
        for other, reader in readable.items():
            if other != number:
                state = self._read(other, reader, order_id)
                if state is not None:
                    return other, reader, state
        return None

    @staticmethod
    def _read(number: int, reader: StoreReader, order_id: str) -> bytes | None:
        try:
            return reader.get(order_id)
        except StoreGoneError as exc:
            # The worker that held it is replacing the file: it is not readable now.
            raise PartitionNotHeldError(number) from exc

    def _history_of(self, order_id: str) -> tuple[int, StoreReader] | None:
        """The partition whose store has the order (found as ``get`` finds it), with its
        history complete; None if the order does not exist."""
        if not self._history:
            raise HistoryOffError("this query service keeps no history (ES_ORDERS_HISTORY=off)")
        found = self._locate(order_id)
        if found is None:
            return None
        number, reader, _ = found
        try:
            marks = reader.history_marks()
        except StoreGoneError as exc:
            raise PartitionNotHeldError(number) from exc
        if marks is None or not marks.complete:
            raise HistoryRebuildingError(number)
        return number, reader

    def events(
        self, order_id: str, after_version: int, limit: int
    ) -> tuple[int, list[EventRow]] | None:
        found = self._history_of(order_id)
        if found is None:
            return None
        number, reader = found
        try:
            return number, reader.events(order_id, after_version, limit)
        except StoreGoneError as exc:
            raise PartitionNotHeldError(number) from exc

    def events_until(
        self, order_id: str, *, version: int | None = None, timestamp: int | None = None
    ) -> list[bytes] | None:
        found = self._history_of(order_id)
        if found is None:
            return None
        number, reader = found
        try:
            return reader.events_until(order_id, version=version, timestamp=timestamp)
        except StoreGoneError as exc:
            raise PartitionNotHeldError(number) from exc

    def holds(self, number: int) -> bool:
        """Whether a worker of this instance holds the partition (readable or restoring)."""
        return number in self._board.snapshot.held

    def readable(self) -> Collection[int]:
        return self._board.snapshot.readable.keys()

    def held(self) -> tuple[HeldPartition, ...]:
        return tuple(
            HeldPartition(
                number,
                part.phase,
                part.consumed,
                part.end,
                part.history,
                part.history_rebuilt,
                part.history_target,
            )
            for number, part in sorted(self._board.snapshot.held.items())
        )

    def page(
        self, after: str | None, limit: int, partitions: Collection[int] | None = None
    ) -> list[tuple[str, bytes]]:
        """Up to ``limit`` rows after ``after`` of ``partitions`` (default: every readable
        one); ``PartitionNotHeldError`` if one of them is not readable here."""
        readable = self._board.snapshot.readable
        if partitions is None:
            if not readable:
                raise PartitionNotHeldError(None)
            partitions = sorted(readable)
        pages = []
        for number in partitions:
            reader = readable.get(number)
            if reader is None:
                raise PartitionNotHeldError(number)
            try:
                pages.append(reader.page(after, limit))
            except StoreGoneError as exc:
                raise PartitionNotHeldError(number) from exc
        return list(islice(heapq.merge(*pages), limit))

    def readiness(self) -> Readiness:
        return self._board.snapshot.readiness

    def stats(self) -> dict[str, object]:
        return self._board.stats()
