"""Order state and the fold: ``evolve`` applies one event, ``fold`` a sequence.

Events are facts: ``evolve`` never refuses one. A redelivered event (version not beyond
the state's) is skipped as a duplicate; a version gap is applied and reported, so the
caller can log and count it. Rules for *new* events (existence, cancelled orders,
value ranges) belong to ``decide``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Annotated, assert_never

import msgspec
from msgspec import Meta
from msgspec.structs import replace

from es_orders.domain.events import (
    Event,
    Id,
    Instant,
    OrderCancelled,
    OrderCreated,
    Price,
    PriceChanged,
    ProductChanged,
    Quantity,
    QuantityChanged,
    Version,
)


class OrderStatus(enum.StrEnum):
    OPEN = "open"
    CANCELLED = "cancelled"


class OrderState(msgspec.Struct, frozen=True, gc=False):
    """One order's current state: the query API's body and the changelog's value.

    ``user_id``, ``product_id``, ``quantity`` and ``price`` are null for an order first
    seen through a legacy partial update. ``version`` is that of the last event applied.
    """

    # The one definition of an order state's JSON: the codec writes and reads it as it is
    # declared here, checking these bounds on read, and both HTTP services publish its
    # JSON Schema. Constructing a state checks nothing (``_blank`` is at version 0).
    id: Annotated[Id, Meta(examples=["1"])]
    user_id: Annotated[Id, Meta(examples=["1"])] | None
    product_id: Annotated[Id, Meta(examples=["57"])] | None
    quantity: Annotated[Quantity, Meta(examples=[69])] | None
    price: Annotated[Price, Meta(examples=[12])] | None
    status: OrderStatus
    version: Annotated[
        Version, Meta(description="The version of the last event applied.", examples=[7])
    ]
    created_at: Instant
    updated_at: Instant


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    GAP = "gap"


# Module-level aliases: reading an Enum member through its class costs ~0.1 us on
# Python 3.11, and evolve runs once for every event folded.
_APPLIED, _DUPLICATE, _GAP = Outcome.APPLIED, Outcome.DUPLICATE, Outcome.GAP


class Evolved(msgspec.Struct, frozen=True, gc=False):
    state: OrderState
    outcome: Outcome


def _blank(event: Event) -> OrderState:
    """The state an order starts from when its first event is not OrderCreated."""
    return OrderState(
        id=event.order_id,
        user_id=None,
        product_id=None,
        quantity=None,
        price=None,
        status=OrderStatus.OPEN,
        version=0,
        created_at=event.occurred_at,
        updated_at=event.occurred_at,
    )


def _apply(state: OrderState, event: Event) -> OrderState:
    # One replace per event: this runs once for every event the system folds.
    at, version = event.occurred_at, event.version
    match event:
        case OrderCreated():
            return replace(
                state,
                user_id=event.user_id,
                product_id=event.product_id,
                quantity=event.quantity,
                price=event.price,
                version=version,
                updated_at=at,
            )
        case PriceChanged():
            return replace(state, price=event.price, version=version, updated_at=at)
        case QuantityChanged():
            return replace(state, quantity=event.quantity, version=version, updated_at=at)
        case ProductChanged():
            return replace(state, product_id=event.product_id, version=version, updated_at=at)
        case OrderCancelled():
            return replace(state, status=OrderStatus.CANCELLED, version=version, updated_at=at)
        case _:
            assert_never(event)


def evolve(state: OrderState | None, event: Event) -> Evolved:
    """Apply one event to the state of its order (None: not seen yet)."""
    current = state if state is not None else _blank(event)
    if event.version <= current.version:
        return Evolved(current, _DUPLICATE)
    outcome = _GAP if event.version > current.version + 1 else _APPLIED
    return Evolved(_apply(current, event), outcome)


class FoldResult(msgspec.Struct, frozen=True, gc=False):
    state: OrderState | None
    duplicates: int = 0
    gaps: int = 0


def fold(events: Iterable[Event], state: OrderState | None = None) -> FoldResult:
    """Fold the events of one order, in log order, into its state."""
    duplicates = gaps = 0
    for event in events:
        evolved = evolve(state, event)
        state = evolved.state
        duplicates += evolved.outcome is _DUPLICATE
        gaps += evolved.outcome is _GAP
    return FoldResult(state, duplicates, gaps)
