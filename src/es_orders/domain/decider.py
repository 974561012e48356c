"""``decide``: the rules of the command API, as a pure function.

The rules are docs/architecture.md, "Command service".

The result is the events to append, in order; an empty tuple means the command asks
for what the order already is (idempotent: nothing to append). A command that breaks a
rule raises a ``DomainError``; the HTTP layer maps each subclass to its status code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import assert_never

from es_orders.domain.commands import (
    CancelOrder,
    ChangePrice,
    ChangeProduct,
    ChangeQuantity,
    Command,
    CreateOrder,
)
from es_orders.domain.events import (
    MAX_ID_LENGTH,
    MAX_INT,
    MIN_PRICE,
    MIN_QUANTITY,
    Event,
    OrderCancelled,
    OrderCreated,
    PriceChanged,
    ProductChanged,
    QuantityChanged,
)
from es_orders.domain.state import OrderState, OrderStatus

# Ids travel in URL paths and Kafka keys: keep them short and printable. A new order's id
# may be as long as any id an event carries (MAX_ID_LENGTH), no longer.
ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:@-]{{0,{MAX_ID_LENGTH - 1}}}")
MAX_TEXT = 256  # a cancellation's reason


class DomainError(Exception):
    """A command that the order's rules refuse. Root of the domain's errors."""


class InvalidCommandError(DomainError):
    """A value out of range or malformed (HTTP 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class OrderNotFoundError(DomainError):
    """The order does not exist (HTTP 404)."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id!r} does not exist")
        self.order_id = order_id


class OrderAlreadyExistsError(DomainError):
    """A create for an id that is taken (HTTP 409)."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id!r} already exists")
        self.order_id = order_id


class OrderIsCancelledError(DomainError):
    """A change to a cancelled order (HTTP 409)."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id!r} is cancelled and can no longer change")
        self.order_id = order_id


class VersionConflictError(DomainError):
    """The expected version is not the current one (HTTP 412)."""

    def __init__(self, order_id: str, expected: int, current: int) -> None:
        super().__init__(
            f"order {order_id!r} is at version {current}, the command expected {expected}"
        )
        self.order_id = order_id
        self.expected = expected
        self.current = current


def _check_id(field: str, value: str) -> None:
    if not ID_PATTERN.fullmatch(value):
        raise InvalidCommandError(
            field,
            f"must be 1-{MAX_ID_LENGTH} characters: letters, digits and . _ : @ - (not first)",
        )


def _check_text(field: str, value: str, *, limit: int = MAX_TEXT, empty_ok: bool = False) -> None:
    if not value and not empty_ok:
        raise InvalidCommandError(field, "must not be empty")
    if len(value) > limit:
        raise InvalidCommandError(field, f"must be at most {limit} characters")


def _check_int(field: str, value: int, minimum: int) -> None:
    if not minimum <= value <= MAX_INT:
        raise InvalidCommandError(field, f"must be an integer from {minimum} to {MAX_INT}")


def _validate(command: Command) -> None:
    _check_id("order_id", command.order_id)
    match command:
        case CreateOrder():
            _check_text("user_id", command.user_id, limit=MAX_ID_LENGTH)
            _check_text("product_id", command.product_id, limit=MAX_ID_LENGTH)
            _check_int("quantity", command.quantity, MIN_QUANTITY)
            _check_int("price", command.price, MIN_PRICE)
        case ChangePrice():
            _check_int("price", command.price, MIN_PRICE)
        case ChangeQuantity():
            _check_int("quantity", command.quantity, MIN_QUANTITY)
        case ChangeProduct():
            _check_text("product_id", command.product_id, limit=MAX_ID_LENGTH)
        case CancelOrder():
            _check_text("reason", command.reason, empty_ok=True)
        case _:
            assert_never(command)


def _is_no_op(command: Command, state: OrderState) -> bool:
    match command:
        case ChangePrice():
            return command.price == state.price
        case ChangeQuantity():
            return command.quantity == state.quantity
        case ChangeProduct():
            return command.product_id == state.product_id
        case CancelOrder():
            return state.status is OrderStatus.CANCELLED
        case CreateOrder():  # pragma: no cover - decide handles creates before this
            raise AssertionError("a create is never a no-op")
        case _:
            assert_never(command)


def _change_event(command: Command, event_id: str, version: int, now: datetime) -> Event:
    head = (event_id, command.order_id, version, now)
    match command:
        case CreateOrder():
            return OrderCreated(
                *head,
                user_id=command.user_id,
                product_id=command.product_id,
                quantity=command.quantity,
                price=command.price,
            )
        case ChangePrice():
            return PriceChanged(*head, price=command.price)
        case ChangeQuantity():
            return QuantityChanged(*head, quantity=command.quantity)
        case ChangeProduct():
            return ProductChanged(*head, product_id=command.product_id)
        case CancelOrder():
            return OrderCancelled(*head, reason=command.reason)
        case _:
            assert_never(command)


def decide(
    command: Command,
    state: OrderState | None,
    *,
    now: datetime,
    new_event_id: Callable[[], str],
) -> tuple[Event, ...]:
    """The events that ``command`` appends to the order in ``state`` (None: no such order).

    ``now`` and ``new_event_id`` are passed in so that the function stays pure.
    """
    _validate(command)
    if isinstance(command, CreateOrder):
        if state is not None:
            raise OrderAlreadyExistsError(command.order_id)
        return (_change_event(command, new_event_id(), 1, now),)
    if state is None:
        raise OrderNotFoundError(command.order_id)
    expected = command.expected_version
    if expected is not None and expected != state.version:
        raise VersionConflictError(command.order_id, expected, state.version)
    if _is_no_op(command, state):
        return ()
    if state.status is OrderStatus.CANCELLED:
        raise OrderIsCancelledError(command.order_id)
    return (_change_event(command, new_event_id(), state.version + 1, now),)
