"""The command service's HTTP API (docs/architecture.md, "Command service").

Handlers are plain ``def``: a command waits for the broker's acknowledgement, and FastAPI
runs sync handlers in its threadpool, off the event loop. Every refusal is mapped to a
problem in ``command.problems``; a 2xx means the event is acknowledged (or that there
was nothing to append). Bodies are limited to ``max_body_bytes`` and parsed as strict
JSON (``http.bodies``); every status a route can answer is in its OpenAPI ``responses``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Request, Response
from fastapi.security import HTTPBearer
from fastapi.types import DecoratedCallable

from es_orders import __version__
from es_orders.codec import encode_state
from es_orders.command.auth import BearerTokenMiddleware
from es_orders.command.errors import CommandUnavailableError
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
from es_orders.command.problems import OrderIdIn, precondition_problem, problem_for
from es_orders.config import DEFAULT_MAX_BODY_BYTES
from es_orders.domain import (
    CancelOrder,
    ChangePrice,
    ChangeProduct,
    ChangeQuantity,
    Command,
    CreateOrder,
    DomainError,
)
from es_orders.http import install_problem_handlers, problem_responses
from es_orders.http.bodies import install_body_rules
from es_orders.http.health import add_health_routes
from es_orders.http.openapi import JSON_MEDIA_TYPE, install_openapi, order_state_content
from es_orders.http.problems import not_ready_problem, order_not_found_problem


def _if_match(
    request: Request,
    if_match: Annotated[
        str | None,
        Header(
            description='The version the change is conditional on, as an ETag: `"7"` '
            '(also accepted: `W/"7"`, `7`; `*` means any). A mismatch is a 412; a list of '
            "tags, on one line or in several `If-Match` headers, is a 422."
        ),
    ] = None,
) -> str | None:
    # Several If-Match field lines are one list (RFC 9110, 5.3), as if sent on one line.
    lines = request.headers.getlist("if-match")
    return ", ".join(lines) if len(lines) > 1 else if_match


IfMatch = Annotated[str | None, Depends(_if_match)]
OrderId = Annotated[str, Path(description="The order's id.", examples=["1"])]
_CHANGE_RESPONSES = problem_responses(401, 404, 409, 412, 413, 422, 503, 500)


async def _received_at() -> float:
    """When the request reached the app. Taken on the event loop, before the handler waits
    for a worker thread, so that the command timeout counts that wait as well."""
    return time.monotonic()


ReceivedAt = Annotated[float, Depends(_received_at)]


def _etag(version: int) -> str:
    return f'"{version}"'


def _run(
    handler: CommandHandler,
    command: Command,
    response: Response,
    received_at: float,
    order_id_in: OrderIdIn = "path",
) -> VersionModel:
    try:
        accepted: Accepted = handler.handle(command, received_at=received_at)
    except (DomainError, CommandUnavailableError) as exc:
        raise problem_for(
            exc, command, order_id_in=order_id_in, readiness=handler.readiness()
        ) from exc
    response.headers["ETag"] = _etag(accepted.version)
    return VersionModel(id=accepted.order_id, version=accepted.version)


def _expected(if_match: str | None, in_body: int | None) -> int | None:
    try:
        return expected_version(if_match, in_body)
    except InvalidPreconditionError as exc:
        raise precondition_problem(exc, if_match) from exc


def create_command_app(
    handler: CommandHandler,
    *,
    api_token: str | None = None,
    new_order_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The command service's FastAPI app; writes need ``api_token`` as a bearer token if set,
    and a body larger than ``max_body_bytes`` is refused (413)."""
    app = FastAPI(
        title="es-orders command service",
        version=__version__,
        description="Create and change orders. Each change is an event on the es-orders topic; "
        "a 2xx is returned only once the broker has acknowledged it.",
    )
    install_problem_handlers(app)
    install_body_rules(app, max_body_bytes)
    install_openapi(app)
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
            **problem_responses(401, 409, 413, 422, 503, 500),
        },
        dependencies=documented_auth,
    )
    def create_order(
        body: CreateOrderBody, response: Response, received_at: ReceivedAt
    ) -> VersionModel:
        order_id = body.id if body.id is not None else new_order_id()
        command = CreateOrder(order_id, body.user_id, body.product_id, body.quantity, body.price)
        created = _run(handler, command, response, received_at, order_id_in="body")
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
        order_id: OrderId,
        body: ChangePriceBody,
        response: Response,
        received_at: ReceivedAt,
        if_match: IfMatch = None,
    ) -> VersionModel:
        expected = _expected(if_match, body.expected_version)
        return _run(handler, ChangePrice(order_id, body.price, expected), response, received_at)

    @change_route("quantity", "Change an order's quantity")
    def change_quantity(
        order_id: OrderId,
        body: ChangeQuantityBody,
        response: Response,
        received_at: ReceivedAt,
        if_match: IfMatch = None,
    ) -> VersionModel:
        expected = _expected(if_match, body.expected_version)
        return _run(
            handler, ChangeQuantity(order_id, body.quantity, expected), response, received_at
        )

    @change_route("product", "Change an order's product")
    def change_product(
        order_id: OrderId,
        body: ChangeProductBody,
        response: Response,
        received_at: ReceivedAt,
        if_match: IfMatch = None,
    ) -> VersionModel:
        expected = _expected(if_match, body.expected_version)
        return _run(
            handler, ChangeProduct(order_id, body.product_id, expected), response, received_at
        )

    @change_route("cancel", "Cancel an order")
    def cancel_order(
        order_id: OrderId,
        response: Response,
        received_at: ReceivedAt,
        body: CancelOrderBody | None = None,
        if_match: IfMatch = None,
    ) -> VersionModel:
        body = body or CancelOrderBody()
        expected = _expected(if_match, body.expected_version)
        return _run(handler, CancelOrder(order_id, body.reason, expected), response, received_at)

    _add_reads(app, handler)
    return app


def _add_reads(app: FastAPI, handler: CommandHandler) -> None:
    @app.get(
        "/orders/{order_id}",
        tags=["orders"],
        summary="The order as this service decides against it (read your own writes)",
        responses={
            200: {
                "description": "The order's state; its ETag is its version.",
                "content": order_state_content(),
                "headers": {"ETag": {"schema": {"type": "string"}, "example": '"7"'}},
            },
            **problem_responses(404, 503, 500),
        },
    )
    def get_order(order_id: OrderId) -> Response:
        readiness = handler.readiness()
        if not readiness.ready:
            raise not_ready_problem(readiness)
        state = handler.current(order_id)
        if state is None:
            raise order_not_found_problem(order_id)
        return Response(
            content=encode_state(state),
            media_type=JSON_MEDIA_TYPE,
            headers={"ETag": _etag(state.version)},
        )

    add_health_routes(
        app,
        handler.readiness,
        ready_summary="Readiness: the view of every partition restored and caught up",
    )
