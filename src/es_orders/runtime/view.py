"""The materializer's stores as an ``OrderView``: interactive queries from HTTP threads."""

from __future__ import annotations

import heapq
from itertools import islice

import msgspec

from es_orders.kafka.partitioner import partition_for
from es_orders.runtime.materializer import Materializer
from es_orders.runtime.views import PartitionNotHeldError, Readiness


class MaterializedView:
    """Reads the committed checkpoints of every partition this instance holds.

    Each read opens its own SQLite connection (WAL), so it never waits for the fold loop
    and never sees a batch that is not checkpointed whole.
    """

    def __init__(self, materializer: Materializer) -> None:
        self._materializer = materializer

    def get(self, order_id: str) -> bytes | None:
        readable = self._materializer.readable
        for part in readable.values():
            state = part.reader.get(order_id)
            if state is not None:
                return state
        # "Does not exist" only from an instance that holds every partition: a producer
        # may place keys by another hash than the Java client's, so a miss in the
        # partition murmur2 names proves nothing while others are held elsewhere.
        partitions = self._materializer.config.partitions
        if len(readable) < partitions:
            likely = partition_for(order_id.encode(), partitions)
            raise PartitionNotHeldError(None if likely in readable else likely)
        return None

    def page(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        readable = self._materializer.readable
        if not readable:
            raise PartitionNotHeldError(None)
        pages = [part.reader.page(after, limit) for part in readable.values()]
        return list(islice(heapq.merge(*pages), limit))

    def readiness(self) -> Readiness:
        return self._materializer.readiness()

    def stats(self) -> dict[str, int | float]:
        stats: dict[str, int | float] = msgspec.structs.asdict(self._materializer.counters)
        return stats
