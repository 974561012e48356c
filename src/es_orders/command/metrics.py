"""What the command service's handler made of each command, for ``GET /metrics``.

Counted where a command is decided, so a command forwarded to the instance holding its
order is counted once, there (the forwarding instance counts the forward,
``http.metrics.ForwardCollector``); a request refused before it became a command (a 401,
an invalid body) is only in the request durations.
"""

from __future__ import annotations

from typing import assert_never

from prometheus_client import CollectorRegistry, Counter

from es_orders.command.handler import Accepted
from es_orders.domain import (
    CancelOrder,
    ChangePrice,
    ChangeProduct,
    ChangeQuantity,
    Command,
    CreateOrder,
)
from es_orders.http import PROBLEM_TYPE_BASE, ProblemError


def command_kind(command: Command) -> str:
    match command:
        case CreateOrder():
            return "create_order"
        case ChangePrice():
            return "change_price"
        case ChangeQuantity():
            return "change_quantity"
        case ChangeProduct():
            return "change_product"
        case CancelOrder():
            return "cancel_order"
        case _:
            assert_never(command)


class CommandOutcomes:
    """``es_orders_commands_total``: commands decided here, by kind, status and outcome."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counter = Counter(
            "es_orders_commands",
            "Commands this instance decided, by kind, the HTTP status it answered and the "
            "outcome: applied, unchanged (nothing to append), replayed (an Idempotency-Key "
            "seen before), or the problem's type (version-conflict, order-in-doubt, ...).",
            ["kind", "status", "outcome"],
            registry=registry,
        )

    def accepted(self, command: Command, accepted: Accepted) -> None:
        status = "201" if isinstance(command, CreateOrder) else "200"
        if accepted.replayed:
            outcome = "replayed"
        else:
            outcome = "applied" if accepted.appended else "unchanged"
        self._counter.labels(command_kind(command), status, outcome).inc()

    def refused(self, command: Command, problem: ProblemError) -> None:
        outcome = problem.type.removeprefix(PROBLEM_TYPE_BASE)
        self._counter.labels(command_kind(command), str(problem.status), outcome).inc()
