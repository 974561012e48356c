"""What the HTTP layer may ask of a materialized view, as Protocols (a stub stands in for tests)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from es_orders.errors import EsOrdersError


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether an instance serves complete state, and if not, what it is waiting for."""

    ready: bool
    waiting_for: tuple[str, ...] = ()
    partitions: dict[int, str] = field(default_factory=dict)


class PartitionNotHeldError(EsOrdersError):
    """The partition that holds a key is not held by this instance now: ask again later."""

    def __init__(self, partition: int | None) -> None:
        where = "no partition" if partition is None else f"partition {partition}"
        super().__init__(f"this instance holds {where} of the orders now")
        self.partition = partition


# One event of an order's history: its version, the offset of its record in the
# partition, the record's timestamp (Unix ms), and the event's wire JSON.
EventRow = tuple[int, int, int, bytes]


@dataclass(frozen=True, slots=True)
class HeldPartition:
    """A partition an instance holds, as other instances learn of it."""

    number: int
    phase: str  # restoring, catching-up or caught-up
    consumed: int | None = None  # next offset of the events topic to fold
    end: int | None = None  # the partition's end as last fetched
    history: str | None = None  # complete, rebuilding, or None: not kept
    history_rebuilt: int | None = None  # how far its rebuild folded the events topic
    history_target: int | None = None  # the offset the rebuild ends below


class OrderView(Protocol):
    """Read access to the orders an instance holds; bodies are order-state JSON (codec)."""

    def get(self, order_id: str) -> bytes | None:
        """The state JSON of one order, or None if it does not exist.

        Raises ``PartitionNotHeldError`` when this instance does not hold it and does not
        hold every partition: then it cannot tell whether the order exists.
        """
        ...

    def page(
        self, after: str | None, limit: int, partitions: Collection[int] | None = None
    ) -> list[tuple[str, bytes]]:
        """Up to ``limit`` (id, state JSON) pairs with ids above ``after``, ordered by id,
        from ``partitions`` (default: every partition readable here).

        Raises ``PartitionNotHeldError`` when this instance holds no partition, or one of
        ``partitions`` is not readable here.
        """
        ...

    @property
    def partitions(self) -> int:
        """How many partitions the events topic has."""
        ...

    def holds(self, number: int) -> bool:
        """Whether this instance holds the partition (readable, or restoring)."""
        ...

    def readable(self) -> Collection[int]:
        """The partitions this instance can read now."""
        ...

    def held(self) -> tuple[HeldPartition, ...]:
        """The partitions this instance holds, by number."""
        ...

    def readiness(self) -> Readiness: ...

    def events(
        self, order_id: str, after_version: int, limit: int
    ) -> tuple[int, list[EventRow]] | None:
        """The partition holding the order, and up to ``limit`` of its events after
        ``after_version``, in version order; None if the order does not exist.

        Raises ``PartitionNotHeldError`` as ``get``; ``HistoryOffError`` when no history
        is kept, ``HistoryRebuildingError`` while its partition's history is rebuilt.
        """
        ...

    def events_until(
        self, order_id: str, *, version: int | None = None, timestamp: int | None = None
    ) -> list[bytes] | None:
        """The order's events (wire JSON) up to ``version``, or as of ``timestamp`` (Unix
        ms); None if the order does not exist. Raises as ``events``."""
        ...

    def stats(self) -> dict[str, object]:
        """Counters of the fold since start (records consumed, dead letters, ...): counts
        are integers, instants (``*_at``) Unix seconds; ``workers`` and ``partitions``."""
        ...
