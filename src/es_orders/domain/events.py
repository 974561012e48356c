"""The five order events: facts, in the past tense. Wire format lives in ``es_orders.codec``.

Events and states are frozen msgspec Structs rather than dataclasses: the fold creates
one of each per event, and a Struct is built some twenty times faster, which is most of
the difference between folding tens and hundreds of thousands of events a second.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

# Value bounds shared by the codec (what an event or a state may carry), the decider (what
# a command may ask for) and both HTTP APIs (what they publish). Prices are integer minor
# units; both fit a SQLite INTEGER. Ids (of orders, events, users, products) are at most
# MAX_ID_LENGTH characters everywhere: whatever id an event can carry, the command
# service accepts, and the other way round.
MIN_QUANTITY = 1
MIN_PRICE = 0
MAX_INT = 2**63 - 1
MAX_ID_LENGTH = 256

# The same bounds as annotations: msgspec checks them when the codec decodes, and they
# are the JSON Schema both services publish for an order state.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Quantity = Annotated[int, msgspec.Meta(ge=MIN_QUANTITY, le=MAX_INT)]
Price = Annotated[int, msgspec.Meta(ge=MIN_PRICE, le=MAX_INT, description="In minor units.")]
Version = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
Instant = Annotated[datetime, msgspec.Meta(tz=True)]
# An Idempotency-Key: what RFC 9110 allows in a field value, printable ASCII, bounded.
MAX_IDEMPOTENCY_KEY = 255
IdempotencyKeyText = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_IDEMPOTENCY_KEY, pattern=r"^[\x21-\x7e]+$")
]


class Idempotency(msgspec.Struct, frozen=True, gc=False):
    """The client's ``Idempotency-Key`` an event was appended for, and the digest of the
    request it came with: a retry with the key is answered from the event, and the same key
    with another request is refused. Only events the command service appended for a request
    with that header carry it."""

    key: IdempotencyKeyText
    digest: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class OrderCreated(msgspec.Struct, frozen=True, gc=False):
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
    idempotency: Idempotency | None = None


class PriceChanged(msgspec.Struct, frozen=True, gc=False):
    event_id: str
    order_id: str
    version: int
    occurred_at: datetime
    price: int
    idempotency: Idempotency | None = None


class QuantityChanged(msgspec.Struct, frozen=True, gc=False):
    event_id: str
    order_id: str
    version: int
    occurred_at: datetime
    quantity: int
    idempotency: Idempotency | None = None


class ProductChanged(msgspec.Struct, frozen=True, gc=False):
    event_id: str
    order_id: str
    version: int
    occurred_at: datetime
    product_id: str
    idempotency: Idempotency | None = None


class OrderCancelled(msgspec.Struct, frozen=True, gc=False):
    event_id: str
    order_id: str
    version: int
    occurred_at: datetime
    reason: str
    idempotency: Idempotency | None = None


Event = OrderCreated | PriceChanged | QuantityChanged | ProductChanged | OrderCancelled
