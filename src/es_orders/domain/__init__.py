"""The pure order domain: events, state, ``evolve``/``fold`` and ``decide``. No I/O here."""

from es_orders.domain.commands import (
    CancelOrder,
    ChangePrice,
    ChangeProduct,
    ChangeQuantity,
    Command,
    CreateOrder,
)
from es_orders.domain.decider import (
    DomainError,
    InvalidCommandError,
    OrderAlreadyExistsError,
    OrderIsCancelledError,
    OrderNotFoundError,
    VersionConflictError,
    decide,
)
from es_orders.domain.events import (
    Event,
    Idempotency,
    OrderCancelled,
    OrderCreated,
    PriceChanged,
    ProductChanged,
    QuantityChanged,
)
from es_orders.domain.state import (
    Evolved,
    FoldResult,
    OrderState,
    OrderStatus,
    Outcome,
    evolve,
    fold,
)

__all__ = [
    "CancelOrder",
    "ChangePrice",
    "ChangeProduct",
    "ChangeQuantity",
    "Command",
    "CreateOrder",
    "DomainError",
    "Event",
    "Evolved",
    "FoldResult",
    "Idempotency",
    "InvalidCommandError",
    "OrderAlreadyExistsError",
    "OrderCancelled",
    "OrderCreated",
    "OrderIsCancelledError",
    "OrderNotFoundError",
    "OrderState",
    "OrderStatus",
    "Outcome",
    "PriceChanged",
    "ProductChanged",
    "QuantityChanged",
    "VersionConflictError",
    "decide",
    "evolve",
    "fold",
]
