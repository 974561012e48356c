"""Synthetic event streams with valid versions, for benchmarks and fault tests."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from es_orders.codec import encode_event
from es_orders.domain import Event, OrderCreated, PriceChanged, ProductChanged, QuantityChanged

EPOCH = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def order_events(orders: int, events: int, seed: int = 7) -> Iterator[Event]:
    """``events`` typed events over ``orders`` orders: each created first, then changed at
    random, every version exactly one beyond the last."""
    rng = random.Random(seed)
    versions = [0] * orders
    for n in range(events):
        index = n if n < orders else rng.randrange(orders)
        versions[index] += 1
        version = versions[index]
        order_id = f"o{index:07d}"
        at = EPOCH + timedelta(milliseconds=n)
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if version == 1:
            yield OrderCreated(event_id, order_id, 1, at, f"u{index % 97}", "p1", 1, 100)
            continue
        match rng.randrange(3):
            case 0:
                yield PriceChanged(event_id, order_id, version, at, rng.randrange(100_000))
            case 1:
                yield QuantityChanged(event_id, order_id, version, at, rng.randrange(1, 100))
            case _:
                yield ProductChanged(event_id, order_id, version, at, f"p{rng.randrange(500)}")


def encoded(events: Iterator[Event]) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) records of the events topic."""
    for event in events:
        yield event.order_id.encode(), encode_event(event)
