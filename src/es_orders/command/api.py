"""The command service's HTTP API (docs/architecture.md, "Command service").

Handlers are plain ``def``: a command waits for the broker's acknowledgement, and FastAPI
runs sync handlers in its threadpool, off the event loop. Every refusal is mapped to a
problem in ``command.problems``; a 2xx means the event is acknowledged (or that there
was nothing to append).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Response
from fastapi.security import HTTPBearer
from fastapi.types import DecoratedCallable

from es_orders import __version__
from es_orders.codec import encode_state
from es_orders.command.auth import BearerTokenMiddleware
from es_orders.command.errors import CommandUnavailableError, NotReadyError
from es_orders.command.handler import Accepted, CommandHandler
from es_orders.command.models import (
    CancelOrderBody,
    ChangePriceBody,
    ChangeProductBody,
    ChangeQuantityBody,
    CreateOrderBody,
    VersionModel,
)
from es_orders.command.preconditions import InvalidPreconditionError, expected_version
from es_orders.command.problems import OrderIdIn, problem_for, unavailable_problem
from es_orders.domain import (
    CancelOrder,
    ChangePrice,
    ChangeProduct,
    ChangeQuantity,
    Command,
    CreateOrder,
    DomainError,
    OrderNotFoundError,
)
from es_orders.http import install_problem_handlers, problem_responses
from es_orders.http.health import add_health_routes
from es_orders.query.api import OrderStateModel

JSON_MEDIA_TYPE = "application/json"
IfMatch = Annotated[
    str | None,
    Header(
        description='The version the change is conditional on, as an ETag: `"7"` '
        '(also accepted: `W/"7"`, `7`; `*` means any). A mismatch is a 412.'
    ),
]
_CHANGE_RESPONSES = problem_responses(401, 404, 409, 412, 422, 503, 500)


def _etag(version: int) -> str:
    return f'"{version}"'


def _run(
    handler: CommandHandler, command: Command, response: Response, order_id_in: OrderIdIn = "path"
) -> VersionModel:
    try:
        accepted: Accepted = handler.handle(command)
    except (DomainError, CommandUnavailableError) as exc:
        raise problem_for(exc, order_id_in) from exc
    response.headers["ETag"] = _etag(accepted.version)
    return VersionModel(id=accepted.order_id, version=accepted.version)


def _expected(if_match: str | None, in_body: int | None) -> int | None:
    try:
        return expected_version(if_match, in_body)
    except InvalidPreconditionError as exc:
        raise problem_for(exc) from exc


def create_command_app(
    handler: CommandHandler,
    *,
    api_token: str | None = None,
    new_order_id: Callable[[], str] = lambda: uuid.uuid4().hex,
) -> FastAPI:
    """The command service's FastAPI app; writes need ``api_token`` as a bearer token if set."""
    app = FastAPI(
        title="es-orders command service",
        version=__version__,
        description="Create and change orders. Each change is an event on the es-orders topic; "
        "a 2xx is returned only once the broker has acknowledged it.",
    )
    install_problem_handlers(app)
    # Enforced by the middleware; the dependency only puts the scheme into the OpenAPI document.
    documented_auth: list[Any] = []
    if api_token:
        app.add_middleware(BearerTokenMiddleware, token=api_token)
        documented_auth = [Depends(HTTPBearer(auto_error=False))]

    @app.post(
        "/orders",
        tags=["orders"],
        summary="Create an order",
        status_code=201,
        response_model=VersionModel,
        responses={
            201: {"description": "Created; `Location` names the order, `ETag` its version."},
            **problem_responses(401, 409, 422, 503, 500),
        },
        dependencies=documented_auth,
    )
    def create_order(body: CreateOrderBody, response: Response) -> VersionModel:
        order_id = body.id if body.id is not None else new_order_id()
        command = CreateOrder(order_id, body.user_id, body.product_id, body.quantity, body.price)
        created = _run(handler, command, response, order_id_in="body")
        response.headers["Location"] = f"/orders/{order_id}"
        return created

    def change_route(path: str, summary: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
        return app.post(
            f"/orders/{{order_id}}/{path}",
            tags=["orders"],
            summary=summary,
            response_model=VersionModel,
            responses={200: {"description": "Applied, or already so."}, **_CHANGE_RESPONSES},
            dependencies=documented_auth,
        )

    @change_route("price", "Change an order's price")
    def change_price(
        order_id: str, body: ChangePriceBody, response: Response, if_match: IfMatch = None
    ) -> VersionModel:
        expected = _expected(if_match, body.expected_version)
        return _run(handler, ChangePrice(order_id, body.price, expected), response)

    @change_route("quantity", "Change an order's quantity")
    def change_quantity(
        order_id: str, body: ChangeQuantityBody, response: Response, if_match: IfMatch = None
    ) -> VersionModel:
        expected = _expected(if_match, body.expected_version)
        return _run(handler, ChangeQuantity(order_id, body.quantity, expected), response)

    @change_route("product", "Change an order's product")
    def change_product(
        order_id: str, body: ChangeProductBody, response: Response, if_match: IfMatch = None
    ) -> VersionModel:
        expected = _expected(if_match, body.expected_version)
        return _run(handler, ChangeProduct(order_id, body.product_id, expected), response)

    @change_route("cancel", "Cancel an order")
    def cancel_order(
        order_id: str,
        response: Response,
        body: CancelOrderBody | None = None,
        if_match: IfMatch = None,
    ) -> VersionModel:
        body = body or CancelOrderBody()
        expected = _expected(if_match, body.expected_version)
        return _run(handler, CancelOrder(order_id, body.reason, expected), response)

    _add_reads(app, handler)
    return app


def _add_reads(app: FastAPI, handler: CommandHandler) -> None:
    @app.get(
        "/orders/{order_id}",
        tags=["orders"],
        summary="The order as this service decides against it (read your own writes)",
        response_model=OrderStateModel,
        responses={
            200: {"headers": {"ETag": {"schema": {"type": "string"}, "example": '"7"'}}},
            **problem_responses(404, 503, 500),
        },
    )
    def get_order(order_id: str) -> Response:
        readiness = handler.readiness()
        if not readiness.ready:
            raise unavailable_problem(NotReadyError(readiness.waiting_for))
        state = handler.current(order_id)
        if state is None:
            raise problem_for(OrderNotFoundError(order_id))
        return Response(
            content=encode_state(state),
            media_type=JSON_MEDIA_TYPE,
            headers={"ETag": _etag(state.version)},
        )

    add_health_routes(
        app,
        handler.readiness,
        ready_summary="Readiness: the view of every partition restored and caught up",
        not_ready_headers={"Retry-After": str(NotReadyError.retry_after)},
    )
