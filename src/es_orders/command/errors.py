"""Why the command service could not take a command right now (each one an HTTP 503).

These are failures of the service, not refusals by the order's rules (those are the
domain's ``DomainError``s): the same command may well succeed when retried later.
"""

from __future__ import annotations

from es_orders.errors import EsOrdersError


class CommandUnavailableError(EsOrdersError):
    """The command cannot be decided or recorded now; ``retry_after`` in seconds."""

    retry_after = 1


class NotReadyError(CommandUnavailableError):
    """The service's view of the orders is not complete yet (restoring, catching up)."""

    def __init__(self, waiting_for: tuple[str, ...]) -> None:
        super().__init__("waiting for: " + (", ".join(waiting_for) or "an unnamed condition"))
        self.waiting_for = waiting_for


class AppendError(CommandUnavailableError):
    """The broker did not acknowledge the event; whether it was written is unknown."""


class CommandTimeoutError(CommandUnavailableError):
    """The command was not decided within the command timeout; nothing was appended."""

    def __init__(self, order_id: str, timeout: float) -> None:
        super().__init__(
            f"order {order_id!r}: the command was not decided within the command timeout "
            f"({timeout:g} s): earlier commands of this order, or of one sharing its lock, "
            "are still waiting for the broker's acknowledgement, or the service is busy. "
            "Nothing was appended; retry shortly"
        )
        self.order_id = order_id
        self.timeout = timeout


class OrderInDoubtError(CommandUnavailableError):
    """An earlier event of this order may or may not have been written; wait until it shows."""

    def __init__(self, order_id: str, version: int, retry_after: int) -> None:
        super().__init__(
            f"order {order_id!r}: the outcome of its version {version} is not known yet "
            "(the broker did not acknowledge it); retry shortly"
        )
        self.order_id = order_id
        self.version = version
        self.retry_after = retry_after
