"""Commands: what a client asks for, in the imperative. ``decide`` turns them into events."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CreateOrder:
    order_id: str
    user_id: str
    product_id: str
    quantity: int
    price: int


@dataclass(frozen=True, slots=True)
class ChangePrice:
    order_id: str
    price: int
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class ChangeQuantity:
    order_id: str
    quantity: int
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class ChangeProduct:
    order_id: str
    product_id: str
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class CancelOrder:
    order_id: str
    reason: str = ""
    expected_version: int | None = None


Command = CreateOrder | ChangePrice | ChangeQuantity | ChangeProduct | CancelOrder
