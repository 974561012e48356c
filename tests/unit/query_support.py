"""An in-memory stand-in for the query service's view of the orders, and order states for it."""

from __future__ import annotations

import bisect
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

import msgspec

from es_orders.codec import encode_state
from es_orders.domain import OrderState, OrderStatus
from es_orders.runtime.clients import Counters
from es_orders.runtime.history import HistoryOffError
from es_orders.runtime.views import HeldPartition, Readiness

T0 = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)


def state_json(order_id: str, version: int = 1) -> bytes:
    return encode_state(
        OrderState(
            id=order_id,
            user_id="u1",
            product_id="57",
            quantity=2,
            price=12,
            status=OrderStatus.OPEN,
            version=version,
            created_at=T0,
            updated_at=T0 + timedelta(seconds=version),
        )
    )


class InMemoryView:
    """An OrderView over a dict, ids kept sorted as the store keeps them."""

    def __init__(self, readiness: Readiness | None = None) -> None:
        self.states: dict[str, bytes] = {}
        self.ids: list[str] = []
        self.state_of_readiness = readiness or Readiness(ready=True, partitions={0: "caught-up"})
        self.page_calls: list[tuple[str | None, int]] = []
        self.counters = Counters()

    def put(self, order_id: str, state: bytes) -> None:
        if order_id not in self.states:
            bisect.insort(self.ids, order_id)
        self.states[order_id] = state

    def get(self, order_id: str) -> bytes | None:
        return self.states.get(order_id)

    partitions = 1  # one partition, held here: every id is this instance's to answer

    def holds(self, number: int) -> bool:
        return number == 0

    def readable(self) -> Collection[int]:
        return (0,)

    def held(self) -> tuple[HeldPartition, ...]:
        return (HeldPartition(0, "caught-up"),)

    def page(
        self, after: str | None, limit: int, partitions: Collection[int] | None = None
    ) -> list[tuple[str, bytes]]:
        self.page_calls.append((after, limit))
        start = 0 if after is None else bisect.bisect_right(self.ids, after)
        return [(i, self.states[i]) for i in self.ids[start : start + limit]]

    def readiness(self) -> Readiness:
        return self.state_of_readiness

    def events(self, order_id: str, after_version: int, limit: int) -> None:
        raise HistoryOffError("no history in memory")

    def events_until(
        self, order_id: str, *, version: int | None = None, timestamp: int | None = None
    ) -> None:
        raise HistoryOffError("no history in memory")

    def stats(self) -> dict[str, object]:
        # As MaterializedView reports them: the counters, as they are (no workers).
        stats: dict[str, object] = msgspec.structs.asdict(self.counters)
        return stats


def fill(view: InMemoryView, ids: list[str]) -> None:
    for order_id in ids:
        view.put(order_id, state_json(order_id))
