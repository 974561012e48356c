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
    """An event of this order may or may not be in the log; wait until that is known.

    ``appended``: this command's own event was handed to the broker (its fate is what is
    in doubt), else the command was refused, unappended, for an earlier one's.
    """

    def __init__(
        self, order_id: str, version: int, retry_after: int, why: str = "", *, appended: bool
    ) -> None:
        super().__init__(
            f"order {order_id!r}: the outcome of its version {version} is not known yet "
            f"({why or 'the log has not shown whether its event was written and applied'}); "
            "retry shortly, with the same Idempotency-Key if the request had one"
        )
        self.order_id = order_id
        self.version = version
        self.retry_after = retry_after
        self.appended = appended


class PartitionUnavailableError(CommandUnavailableError):
    """The order's partition is not held here now (moving between instances)."""

    def __init__(self, partition: int) -> None:
        super().__init__(
            f"partition {partition} of the orders is not held by this instance now; retry shortly"
        )
        self.partition = partition


class ContendedError(CommandUnavailableError):
    """An unconditional change lost every race it ran for its order's next version."""

    def __init__(self, order_id: str, attempts: int) -> None:
        super().__init__(
            f"order {order_id!r}: the change lost the race for the order's next version "
            f"{attempts} times to other writers; nothing of it was applied, retry shortly"
        )
        self.order_id = order_id


class IdempotencyKeyReusedError(EsOrdersError):
    """An Idempotency-Key the log knows from a different request on this order (422)."""

    def __init__(self, order_id: str, key: str) -> None:
        super().__init__(
            f"the Idempotency-Key was used for a different request on order {order_id!r}; "
            "a key names one request: use a new key for a new request"
        )
        self.order_id = order_id
        self.key = key
