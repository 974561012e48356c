"""Request and response bodies of the command API (pydantic: the HTTP edge only).

Bodies are strict (a quantity is a JSON integer, not ``"2"`` or ``2.0``) and closed
(an unknown member such as ``amount`` is an error, not silently ignored). The bounds
here document the API and keep huge numbers out; ``decide`` remains the authority on
what an order accepts.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from es_orders.domain.decider import MAX_TEXT
from es_orders.domain.events import MAX_ID_LENGTH, MAX_INT, MIN_PRICE, MIN_QUANTITY

Quantity = Annotated[int, Field(ge=MIN_QUANTITY, le=MAX_INT, examples=[2])]
Price = Annotated[int, Field(ge=MIN_PRICE, le=MAX_INT, description="In minor units.")]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
IdText = Annotated[str, Field(max_length=MAX_ID_LENGTH)]
ExpectedVersion = Annotated[
    int | None,
    Field(
        ge=0,
        le=MAX_INT,
        description="Apply only if the order is at this version (like If-Match); else 412.",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class CreateOrderBody(_Body):
    id: Annotated[
        str | None,
        Field(
            max_length=MAX_ID_LENGTH,
            description="Omit to let the service pick one. Letters, digits and `._:@-`, "
            "not starting with a punctuation mark.",
            examples=["1"],
        ),
    ] = None
    user_id: Annotated[IdText, Field(examples=["1"])]
    product_id: Annotated[IdText, Field(examples=["57"])]
    quantity: Quantity
    price: Annotated[Price, Field(examples=[12])]


class ChangePriceBody(_Body):
    price: Annotated[Price, Field(examples=[13])]
    expected_version: ExpectedVersion = None


class ChangeQuantityBody(_Body):
    quantity: Quantity
    expected_version: ExpectedVersion = None


class ChangeProductBody(_Body):
    product_id: Annotated[IdText, Field(examples=["58"])]
    expected_version: ExpectedVersion = None


class CancelOrderBody(_Body):
    reason: Text = ""
    expected_version: ExpectedVersion = None


class VersionModel(BaseModel):
    """The order and its version after the command (unchanged for an idempotent no-op), and
    where its event is in the events topic: ask a query instance for
    ``?min_version=<version>`` to read at least this fresh."""

    id: str = Field(examples=["1"])
    version: int = Field(ge=1, examples=[2])
    partition: int | None = Field(
        default=None, ge=0, description="The order's partition of the events topic.", examples=[1]
    )
    offset: int | None = Field(
        default=None,
        ge=0,
        description="The offset of the event that made this version (null for a no-op on "
        "an order whose last event this instance has not folded itself).",
        examples=[4711],
    )
