"""Every refusal of the command service as an RFC 9457 problem: the one place they map.

    DomainError (the order's rules)          CommandUnavailableError (try again later)
    ├── InvalidCommandError      422         ├── NotReadyError          503 not-ready
    ├── OrderNotFoundError       404         ├── AppendError            503 write-not-acknowledged
    ├── OrderAlreadyExistsError  409         └── OrderInDoubtError      503 order-in-doubt
    ├── OrderIsCancelledError    409
    └── VersionConflictError     412         InvalidPreconditionError   422 (If-Match)

A 422 always has the shape of a request validation problem (``errors`` with ``loc``,
``msg``, ``type``), whether pydantic or the domain found the value wrong, so a client
handles one kind of 422.
"""

from __future__ import annotations

from typing import Literal, assert_never

from es_orders.command.errors import (
    AppendError,
    CommandUnavailableError,
    NotReadyError,
    OrderInDoubtError,
)
from es_orders.command.preconditions import InvalidPreconditionError
from es_orders.domain import (
    DomainError,
    InvalidCommandError,
    OrderAlreadyExistsError,
    OrderIsCancelledError,
    OrderNotFoundError,
    VersionConflictError,
)
from es_orders.http import VALIDATION_ERROR_TYPE, ProblemError, problem_type
from es_orders.http.health import NOT_READY_TYPE

ORDER_NOT_FOUND_TYPE = problem_type("order-not-found")
ORDER_EXISTS_TYPE = problem_type("order-exists")
ORDER_CANCELLED_TYPE = problem_type("order-cancelled")
VERSION_CONFLICT_TYPE = problem_type("version-conflict")
NOT_ACKNOWLEDGED_TYPE = problem_type("write-not-acknowledged")
ORDER_IN_DOUBT_TYPE = problem_type("order-in-doubt")
UNAUTHORIZED_TYPE = problem_type("unauthorized")

OrderIdIn = Literal["body", "path"]


def invalid(loc: tuple[str, ...], message: str) -> ProblemError:
    """A 422 shaped like FastAPI's request validation problems."""
    where = ".".join(loc)
    return ProblemError(
        422,
        f"{where}: {message}",
        title="Invalid request",
        type=VALIDATION_ERROR_TYPE,
        extra={"errors": [{"loc": list(loc), "msg": message, "type": "value_error"}]},
    )


def precondition_problem(exc: InvalidPreconditionError) -> ProblemError:
    return invalid(("header", "If-Match"), str(exc))


def domain_problem(exc: DomainError, order_id_in: OrderIdIn = "path") -> ProblemError:
    """The problem for a command the order's rules refuse."""
    match exc:
        case InvalidCommandError():
            if exc.field == "order_id":
                loc = ("body", "id") if order_id_in == "body" else ("path", "order_id")
            else:
                loc = ("body", exc.field)
            return invalid(loc, str(exc).removeprefix(f"{exc.field}: "))
        case OrderNotFoundError():
            return ProblemError(
                404,
                str(exc),
                title="Order not found",
                type=ORDER_NOT_FOUND_TYPE,
                extra={"order_id": exc.order_id},
            )
        case OrderAlreadyExistsError():
            return ProblemError(
                409,
                str(exc),
                title="Order already exists",
                type=ORDER_EXISTS_TYPE,
                extra={"order_id": exc.order_id},
                headers={"Location": f"/orders/{exc.order_id}"},
            )
        case OrderIsCancelledError():
            return ProblemError(
                409,
                str(exc),
                title="Order is cancelled",
                type=ORDER_CANCELLED_TYPE,
                extra={"order_id": exc.order_id},
            )
        case VersionConflictError():
            return ProblemError(
                412,
                str(exc),
                title="Version conflict",
                type=VERSION_CONFLICT_TYPE,
                extra={
                    "order_id": exc.order_id,
                    "expected_version": exc.expected,
                    "current_version": exc.current,
                },
                headers={"ETag": f'"{exc.current}"'},
            )
    raise AssertionError(f"unmapped domain error: {exc!r}")  # pragma: no cover


def unavailable_problem(exc: CommandUnavailableError) -> ProblemError:
    """The 503 for a command the service cannot take now; ``Retry-After`` says when to retry."""
    headers = {"Retry-After": str(exc.retry_after)}
    match exc:
        case NotReadyError():
            return ProblemError(
                503,
                str(exc),
                title="Not ready",
                type=NOT_READY_TYPE,
                extra={"waiting_for": list(exc.waiting_for)},
                headers=headers,
            )
        case AppendError():
            return ProblemError(
                503,
                str(exc),
                title="Write not acknowledged",
                type=NOT_ACKNOWLEDGED_TYPE,
                headers=headers,
            )
        case OrderInDoubtError():
            return ProblemError(
                503,
                str(exc),
                title="Order in doubt",
                type=ORDER_IN_DOUBT_TYPE,
                extra={"order_id": exc.order_id, "version_in_doubt": exc.version},
                headers=headers,
            )
    raise AssertionError(f"unmapped error: {exc!r}")  # pragma: no cover


def problem_for(
    exc: DomainError | CommandUnavailableError | InvalidPreconditionError,
    order_id_in: OrderIdIn = "path",
) -> ProblemError:
    match exc:
        case DomainError():
            return domain_problem(exc, order_id_in)
        case CommandUnavailableError():
            return unavailable_problem(exc)
        case InvalidPreconditionError():
            return precondition_problem(exc)
        case _:
            assert_never(exc)
