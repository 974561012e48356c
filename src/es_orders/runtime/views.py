"""What the HTTP layer may ask of a materialized view, as Protocols (a stub stands in for tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether an instance serves complete state, and if not, what it is waiting for."""

    ready: bool
    waiting_for: tuple[str, ...] = ()
    partitions: dict[int, str] = field(default_factory=dict)


class OrderView(Protocol):
    """Read access to the orders an instance holds; bodies are order-state JSON (codec)."""

    def get(self, order_id: str) -> bytes | None:
        """The state JSON of one order, or None if this instance does not know it."""
        ...

    def page(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` (id, state JSON) pairs with ids above ``after``, ordered by id."""
        ...

    def readiness(self) -> Readiness: ...

    def stats(self) -> dict[str, float]:
        """Counters of the fold since start (records consumed, dead letters, ...)."""
        ...
