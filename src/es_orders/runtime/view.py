"""The materializer's stores as an ``OrderView``: interactive queries from HTTP threads."""

from __future__ import annotations

import heapq
from itertools import islice

import msgspec

from es_orders.runtime.materializer import Materializer
from es_orders.runtime.views import Readiness


class MaterializedView:
    """Reads the committed checkpoints of every partition this instance holds.

    Each read opens its own SQLite connection (WAL), so it never waits for the fold loop
    and never sees a batch that is not checkpointed whole.
    """

    def __init__(self, materializer: Materializer) -> None:
        self._materializer = materializer

    def get(self, order_id: str) -> bytes | None:
        for part in self._materializer.readable.values():
            state = part.reader.get(order_id)
            if state is not None:
                return state
        return None

    def page(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        pages = [part.reader.page(after, limit) for part in self._materializer.readable.values()]
        return list(islice(heapq.merge(*pages), limit))

    def readiness(self) -> Readiness:
        return self._materializer.readiness()

    def stats(self) -> dict[str, float]:
        return msgspec.structs.asdict(self._materializer.counters)
