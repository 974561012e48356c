"""The five order events: facts, in the past tense. Wire format lives in ``es_orders.codec``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# Value bounds shared by the codec (what an event may carry) and the decider (what a
# command may ask for). Prices are integer minor units; both fit a SQLite INTEGER.
MIN_QUANTITY = 1
MIN_PRICE = 0
MAX_INT = 2**63 - 1


@dataclass(frozen=True, slots=True)
class OrderCreated:
    """An order came to be. Fields are None only when upcast from a legacy partial record;
    typed events on the wire and ``decide`` always carry every value."""

    event_id: str
    order_id: str
    version: int
    occurred_at: datetime
    user_id: str | None
    product_id: str | None
    quantity: int | None
    price: int | None


@dataclass(frozen=True, slots=True)
class PriceChanged:
    event_id: str
    order_id: str
    version: int
    occurred_at: datetime
    price: int


@dataclass(frozen=True, slots=True)
class QuantityChanged:
    event_id: str
    order_id: str
    version: int
    occurred_at: datetime
    quantity: int


@dataclass(frozen=True, slots=True)
class ProductChanged:
    event_id: str
    order_id: str
    version: int
    occurred_at: datetime
    product_id: str


@dataclass(frozen=True, slots=True)
class OrderCancelled:
    event_id: str
    order_id: str
    version: int
    occurred_at: datetime
    reason: str


Event = OrderCreated | PriceChanged | QuantityChanged | ProductChanged | OrderCancelled
