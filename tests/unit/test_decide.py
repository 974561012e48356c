"""Every rule of the command API, on the pure decider."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count

import pytest

from es_orders.domain import (
    CancelOrder,
    ChangePrice,
    ChangeProduct,
    ChangeQuantity,
    Command,
    CreateOrder,
    Event,
    InvalidCommandError,
    OrderAlreadyExistsError,
    OrderCancelled,
    OrderCreated,
    OrderIsCancelledError,
    OrderNotFoundError,
    OrderState,
    OrderStatus,
    PriceChanged,
    ProductChanged,
    QuantityChanged,
    VersionConflictError,
    decide,
    fold,
)
from es_orders.domain.events import MAX_INT

NOW = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)
_ids = count(1)


def run(command: Command, state: OrderState | None) -> tuple[Event, ...]:
    return decide(command, state, now=NOW, new_event_id=lambda: f"e{next(_ids)}")


def created(order_id: str = "1") -> OrderState:
    events = run(CreateOrder(order_id, "u1", "p1", 2, 1000), None)
    state = fold(events).state
    assert state is not None
    return state


def apply(state: OrderState, command: Command) -> OrderState:
    result = fold(run(command, state), state).state
    assert result is not None
    return result


def test_create_gives_version_one_with_every_value() -> None:
    (event,) = run(CreateOrder("1", "u1", "p1", 2, 1000), None)
    assert isinstance(event, OrderCreated)
    assert (event.order_id, event.version, event.occurred_at) == ("1", 1, NOW)
    assert (event.user_id, event.product_id, event.quantity, event.price) == ("u1", "p1", 2, 1000)


def test_create_of_an_existing_id_is_refused() -> None:
    with pytest.raises(OrderAlreadyExistsError, match="already exists"):
        run(CreateOrder("1", "u", "p", 1, 1), created())


@pytest.mark.parametrize(
    ("command", "event_type", "field", "value"),
    [
        (ChangePrice("1", 5), PriceChanged, "price", 5),
        (ChangeQuantity("1", 9), QuantityChanged, "quantity", 9),
        (ChangeProduct("1", "p2"), ProductChanged, "product_id", "p2"),
    ],
)
def test_changes_append_one_event_at_the_next_version(
    command: Command, event_type: type, field: str, value: object
) -> None:
    state = created()
    (event,) = run(command, state)
    assert isinstance(event, event_type)
    assert event.version == 2
    assert getattr(apply(state, command), field) == value


def test_cancel_marks_the_order_cancelled() -> None:
    (event,) = run(CancelOrder("1", "changed my mind"), created())
    assert isinstance(event, OrderCancelled)
    assert event.reason == "changed my mind"
    assert apply(created(), CancelOrder("1")).status is OrderStatus.CANCELLED


@pytest.mark.parametrize(
    "command",
    [ChangePrice("x", 1), ChangeQuantity("x", 1), ChangeProduct("x", "p"), CancelOrder("x")],
)
def test_commands_on_an_unknown_order_are_not_found(command: Command) -> None:
    with pytest.raises(OrderNotFoundError, match="'x' does not exist"):
        run(command, None)


@pytest.mark.parametrize(
    "command", [ChangePrice("1", 1), ChangeQuantity("1", 1), ChangeProduct("1", "p9")]
)
def test_changes_to_a_cancelled_order_are_refused(command: Command) -> None:
    cancelled = apply(created(), CancelOrder("1"))
    with pytest.raises(OrderIsCancelledError):
        run(command, cancelled)


@pytest.mark.parametrize(
    "command",
    [ChangePrice("1", 1000), ChangeQuantity("1", 2), ChangeProduct("1", "p1")],
)
def test_a_change_to_the_current_value_appends_nothing(command: Command) -> None:
    assert run(command, created()) == ()


def test_cancelling_a_cancelled_order_appends_nothing() -> None:
    cancelled = apply(created(), CancelOrder("1"))
    assert run(CancelOrder("1", "again"), cancelled) == ()


def test_expected_version_must_match_the_current_one() -> None:
    state = apply(created(), ChangePrice("1", 7))
    with pytest.raises(VersionConflictError) as caught:
        run(ChangePrice("1", 8, expected_version=1), state)
    assert (caught.value.expected, caught.value.current) == (1, 2)
    (event,) = run(ChangePrice("1", 8, expected_version=2), state)
    assert event.version == 3


def test_a_stale_expected_version_wins_over_an_idempotent_no_op() -> None:
    state = apply(created(), ChangePrice("1", 7))
    with pytest.raises(VersionConflictError):
        run(ChangePrice("1", 7, expected_version=1), state)


def test_an_order_id_as_long_as_an_event_may_carry_is_accepted() -> None:
    [created_event] = run(CreateOrder("x" * 256, "u" * 256, "p" * 256, 1, 1), None)
    assert created_event.order_id == "x" * 256


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (CreateOrder("", "u", "p", 1, 1), "order_id"),
        (CreateOrder("a/b", "u", "p", 1, 1), "order_id"),
        (CreateOrder("-a", "u", "p", 1, 1), "order_id"),
        (CreateOrder("x" * 257, "u", "p", 1, 1), "order_id"),
        (CreateOrder("1", "", "p", 1, 1), "user_id"),
        (CreateOrder("1", "u", "", 1, 1), "product_id"),
        (CreateOrder("1", "u", "p" * 257, 1, 1), "product_id"),
        (CreateOrder("1", "u", "p", 0, 1), "quantity"),
        (CreateOrder("1", "u", "p", 1, -1), "price"),
        (CreateOrder("1", "u", "p", 1, MAX_INT + 1), "price"),
        (ChangePrice("1", -5), "price"),
        (ChangeQuantity("1", -1), "quantity"),
        (ChangeProduct("1", ""), "product_id"),
        (ChangeProduct("1", "p" * 257), "product_id"),
        (CancelOrder("1", "r" * 257), "reason"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(command: Command, field: str) -> None:
    with pytest.raises(InvalidCommandError) as caught:
        run(command, created())
    assert caught.value.field == field
