"""Every refusal of the command service as an RFC 9457 problem: the one place they map.

    DomainError (the order's rules)          CommandUnavailableError (try again later)
    ├── InvalidCommandError      422         ├── NotReadyError          503 not-ready
    ├── OrderNotFoundError       404         ├── AppendError            503 write-not-acknowledged
    ├── OrderAlreadyExistsError  409         ├── CommandTimeoutError    503 command-timeout
    ├── OrderIsCancelledError    409         ├── OrderInDoubtError      503 order-in-doubt
    └── VersionConflictError     412         ├── PartitionUnavailableError 503 partition-unavailable
                                             └── ContendedError         503 order-contended
    InvalidPreconditionError   422 (If-Match)
    IdempotencyKeyReusedError  422 idempotency-key-reused

Each maps to an entry of the catalogue in ``http.problems``, whose builders give the
problems both services share their one shape: a 422 here is the same
``validation_problem`` as a request pydantic refused, a not-ready the same as
``/health/ready``'s.
"""

from __future__ import annotations

from typing import Literal, assert_never

from es_orders.command.errors import (
    AppendError,
    CommandTimeoutError,
    CommandUnavailableError,
    ContendedError,
    IdempotencyKeyReusedError,
    NotReadyError,
    OrderInDoubtError,
    PartitionUnavailableError,
)
from es_orders.command.preconditions import InvalidPreconditionError
from es_orders.domain import (
    Command,
    DomainError,
    InvalidCommandError,
    OrderAlreadyExistsError,
    OrderIsCancelledError,
    OrderNotFoundError,
    VersionConflictError,
)
from es_orders.http import InvalidInput, ProblemError, validation_problem
from es_orders.http.problems import (
    COMMAND_TIMEOUT,
    IDEMPOTENCY_KEY_REUSED,
    ORDER_CANCELLED,
    ORDER_CONTENDED,
    ORDER_EXISTS,
    ORDER_IN_DOUBT,
    VERSION_CONFLICT,
    WRITE_NOT_ACKNOWLEDGED,
    not_ready_problem,
    order_not_found_problem,
    partition_unavailable_problem,
)
from es_orders.runtime.views import Readiness

# The type URIs the command service's own 503s carry, for clients and tests to compare.
NOT_ACKNOWLEDGED_TYPE = WRITE_NOT_ACKNOWLEDGED.type
COMMAND_TIMEOUT_TYPE = COMMAND_TIMEOUT.type
OrderIdIn = Literal["body", "path"]


def precondition_problem(exc: InvalidPreconditionError, if_match: str | None) -> ProblemError:
    return validation_problem([InvalidInput(("header", "If-Match"), str(exc), if_match)])


def _invalid_command(
    exc: InvalidCommandError, command: Command | None, order_id_in: OrderIdIn
) -> ProblemError:
    if exc.field == "order_id":
        loc = ("body", "id") if order_id_in == "body" else ("path", "order_id")
    else:
        loc = ("body", exc.field)
    given = getattr(command, exc.field, None)
    message = str(exc).removeprefix(f"{exc.field}: ")
    return validation_problem([InvalidInput(loc, message, given)])


def domain_problem(
    exc: DomainError, command: Command | None = None, order_id_in: OrderIdIn = "path"
) -> ProblemError:
    """The problem for a command the order's rules refuse (``command``: the one refused)."""
    match exc:
        case InvalidCommandError():
            return _invalid_command(exc, command, order_id_in)
        case OrderNotFoundError():
            return order_not_found_problem(exc.order_id)
        case OrderAlreadyExistsError():
            return ORDER_EXISTS(
                str(exc),
                extra={"order_id": exc.order_id},
                headers={"Location": f"/orders/{exc.order_id}"},
            )
        case OrderIsCancelledError():
            return ORDER_CANCELLED(str(exc), extra={"order_id": exc.order_id})
        case VersionConflictError():
            return VERSION_CONFLICT(
                str(exc),
                extra={
                    "order_id": exc.order_id,
                    "expected_version": exc.expected,
                    "current_version": exc.current,
                },
                headers={"ETag": f'"{exc.current}"'},
            )
    raise AssertionError(f"unmapped domain error: {exc!r}")  # pragma: no cover


def unavailable_problem(
    exc: CommandUnavailableError, readiness: Readiness | None = None
) -> ProblemError:
    """The 503 for a command the service cannot take now; ``Retry-After`` says when to retry.

    A ``NotReadyError`` is told with ``readiness`` (its partitions) when given.
    """
    headers = {"Retry-After": str(exc.retry_after)}
    match exc:
        case NotReadyError():
            partitions = readiness.partitions if readiness is not None else {}
            return not_ready_problem(Readiness(False, exc.waiting_for, partitions), exc.retry_after)
        case AppendError():
            return WRITE_NOT_ACKNOWLEDGED(str(exc), headers=headers)
        case CommandTimeoutError():
            return COMMAND_TIMEOUT(str(exc), extra={"order_id": exc.order_id}, headers=headers)
        case OrderInDoubtError():
            return ORDER_IN_DOUBT(
                str(exc),
                extra={
                    "order_id": exc.order_id,
                    "version_in_doubt": exc.version,
                    # False: nothing of this command was written; it waits for an earlier one.
                    "appended": exc.appended,
                },
                headers=headers,
            )
        case PartitionUnavailableError():
            return partition_unavailable_problem(exc.partition, exc.retry_after)
        case ContendedError():
            return ORDER_CONTENDED(str(exc), extra={"order_id": exc.order_id}, headers=headers)
    raise AssertionError(f"unmapped error: {exc!r}")  # pragma: no cover


def key_reused_problem(exc: IdempotencyKeyReusedError) -> ProblemError:
    return IDEMPOTENCY_KEY_REUSED(
        str(exc), extra={"order_id": exc.order_id, "idempotency_key": exc.key}
    )


def problem_for(
    exc: DomainError | CommandUnavailableError,
    command: Command | None = None,
    *,
    order_id_in: OrderIdIn = "path",
    readiness: Readiness | None = None,
) -> ProblemError:
    match exc:
        case DomainError():
            return domain_problem(exc, command, order_id_in)
        case CommandUnavailableError():
            return unavailable_problem(exc, readiness)
        case _:
            assert_never(exc)
