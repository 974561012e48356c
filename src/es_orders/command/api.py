"""The command service's HTTP API (docs/architecture.md, "Command service").

A command on an order whose partition another instance holds is forwarded to it
(``query.routing``, the same members mechanism as the query instances) and its answer
relayed; one this instance holds is decided here, on the event loop
(``CommandHandler.handle_async``): it awaits its event's return through the fold. Every
refusal is mapped to a problem in ``command.problems``; a 2xx means the log applied the
event (or that there was nothing to append). Bodies are limited to ``max_body_bytes``
and parsed as strict JSON (``http.bodies``); every status a route can answer is in its
OpenAPI ``responses``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Request, Response
from fastapi.security import HTTPBearer
from fastapi.types import DecoratedCallable
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from es_orders import __version__
from es_orders.codec import encode_state
from es_orders.command.auth import BearerTokenMiddleware
from es_orders.command.errors import CommandUnavailableError, IdempotencyKeyReusedError
from es_orders.command.handler import Accepted, CommandHandler
from es_orders.command.metrics import CommandOutcomes
from es_orders.command.models import (
    CancelOrderBody,
    ChangePriceBody,
    ChangeProductBody,
    ChangeQuantityBody,
    CreateOrderBody,
    VersionModel,
)
from es_orders.command.preconditions import InvalidPreconditionError, expected_version
from es_orders.command.problems import (
    OrderIdIn,
    key_reused_problem,
    precondition_problem,
    problem_for,
)
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
from es_orders.http import ProblemError, install_problem_handlers, problem_responses
from es_orders.http.bodies import install_body_rules
from es_orders.http.health import add_health_routes
from es_orders.http.metrics import ForwardCollector, install_metrics
from es_orders.http.openapi import JSON_MEDIA_TYPE, install_openapi, order_state_content
from es_orders.http.problems import (
    ORDER_IN_DOUBT,
    not_ready_problem,
    order_not_found_problem,
    partition_unavailable_problem,
)
from es_orders.query.routing import FORWARDED_FROM, SERVED_BY, Cluster, OwnerUnreachableError

# Derives the id of a created order from its Idempotency-Key when the body names none:
# a retry of the create, on any instance, then names the same order.
KEYED_ORDER_NAMESPACE = uuid.UUID("6a1c3f5e-2b7d-4c8e-9f10-3d5b7a9c1e24")
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"


async def _if_match(
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
    # async: FastAPI runs a plain ``def`` dependency on a worker thread, and that hop
    # alone was most of the slowest commands' time at 200 commands/s.
    lines = request.headers.getlist("if-match")
    return ", ".join(lines) if len(lines) > 1 else if_match


IfMatch = Annotated[str | None, Depends(_if_match)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Names this request: a retry with the same key (within 24 hours, on "
        "any instance) gets the first outcome and appends nothing; the same key with "
        "another request on the order is a 422. 1-255 printable ASCII characters.",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
    ),
]
OrderId = Annotated[str, Path(description="The order's id.", examples=["1"])]
_CHANGE_RESPONSES = problem_responses(401, 404, 409, 412, 413, 422, 503, 500)


async def _received_at() -> float:
    """When the request reached the app. Taken on the event loop, before the handler waits
    for a worker thread, so that the command timeout counts that wait as well."""
    return time.monotonic()


ReceivedAt = Annotated[float, Depends(_received_at)]


def _etag(version: int) -> str:
    return f'"{version}"'


class _Commands:
    """Where a command goes: decided here, or forwarded to the instance holding its order."""

    def __init__(
        self, handler: CommandHandler, cluster: Cluster | None, outcomes: CommandOutcomes
    ) -> None:
        self.handler = handler
        self.cluster = cluster
        self.outcomes = outcomes

    async def run(
        self,
        command: Command,
        request: Request,
        response: Response,
        received_at: float,
        key: str | None,
        *,
        order_id_in: OrderIdIn = "path",
        body: bytes | None = None,
    ) -> VersionModel | Response:
        handler, cluster = self.handler, self.cluster
        partition = handler.partition_of(command.order_id)
        if cluster is not None and not handler.holds(partition):
            return await self.forward(partition, request, body)
        try:
            accepted: Accepted = await handler.handle_async(
                command, received_at=received_at, key=key
            )
        except (DomainError, CommandUnavailableError) as exc:
            problem = problem_for(
                exc, command, order_id_in=order_id_in, readiness=handler.readiness()
            )
            self.outcomes.refused(command, problem)
            raise self._served(problem) from exc
        except IdempotencyKeyReusedError as exc:
            problem = key_reused_problem(exc)
            self.outcomes.refused(command, problem)
            raise self._served(problem) from exc
        self.outcomes.accepted(command, accepted)
        response.headers["ETag"] = _etag(accepted.version)
        if accepted.replayed:
            response.headers[IDEMPOTENT_REPLAYED] = "true"
        if cluster is not None:
            response.headers[SERVED_BY] = cluster.url
        return VersionModel(
            id=accepted.order_id,
            version=accepted.version,
            partition=accepted.partition,
            offset=accepted.offset,
        )

    def _served(self, problem: ProblemError) -> ProblemError:
        if self.cluster is not None:
            problem.headers.setdefault(SERVED_BY, self.cluster.url)
        return problem

    async def forward(self, partition: int, request: Request, body: bytes | None) -> Response:
        """Relay the request to the instance holding ``partition`` (never a second time)."""
        cluster = self.cluster
        assert cluster is not None
        owner = cluster.owner(partition)
        if request.headers.get(FORWARDED_FROM) is not None or owner is None:
            raise self._served(partition_unavailable_problem(partition))
        headers = {"Content-Type": "application/json"}
        for name in ("Authorization", "Idempotency-Key"):
            if (value := request.headers.get(name)) is not None:
                headers[name] = value
        if if_match := request.headers.getlist("if-match"):
            headers["If-Match"] = ", ".join(if_match)
        try:
            answer = await cluster.forward(
                owner.record.url,
                # As the client sent it: an id is never decoded into a path separator.
                request.scope.get("raw_path", b"").decode("latin-1") or request.url.path,
                [],
                headers,
                wait=self.handler.command_timeout,
                method=request.method,
                body=body if body is not None else await request.body(),
            )
        except OwnerUnreachableError as exc:
            # A read, or a command that never reached the holder, changed nothing.
            if not exc.sent or request.method == "GET":
                raise self._served(partition_unavailable_problem(partition)) from exc
            raise self._served(
                ORDER_IN_DOUBT(
                    f"{exc}; the command may or may not have been applied: retry it with "
                    "the same Idempotency-Key, or read the order before deciding again",
                    extra={"appended": None},  # not known here
                    headers={"Retry-After": "1"},
                )
            ) from exc
        return Response(content=answer.body, status_code=answer.status, headers=answer.headers)


def _expected(if_match: str | None, in_body: int | None) -> int | None:
    try:
        return expected_version(if_match, in_body)
    except InvalidPreconditionError as exc:
        raise precondition_problem(exc, if_match) from exc


def create_command_app(
    handler: CommandHandler,
    *,
    cluster: Cluster | None = None,
    api_token: str | None = None,
    new_order_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    collectors: Iterable[Collector] = (),
) -> FastAPI:
    """The command service's FastAPI app; writes need ``api_token`` as a bearer token if set,
    and a body larger than ``max_body_bytes`` is refused (413). With ``cluster``, commands
    on orders other instances hold are forwarded to them. ``GET /metrics`` has the figures
    of ``collectors`` (the fold's) besides the app's own."""
    app = FastAPI(
        title="es-orders command service",
        version=__version__,
        description="Create and change orders. Each change is an event on the es-orders topic; "
        "a 2xx is returned only once the log has applied it (the first event of its version "
        "of the order), with its partition and offset.",
    )
    install_problem_handlers(app)
    install_body_rules(app, max_body_bytes)
    install_openapi(app)
    if cluster is not None:
        app.router.on_shutdown.append(cluster.close)
    # Enforced by the middleware; the dependency only puts the scheme into the OpenAPI document.
    documented_auth: list[Any] = []
    if api_token:
        app.add_middleware(BearerTokenMiddleware, token=api_token)
        documented_auth = [Depends(HTTPBearer(auto_error=False))]
    # After the bearer token's middleware, so that its 401s are measured too.
    forwards = [ForwardCollector(cluster.forwards)] if cluster is not None else []
    registry = install_metrics(app, [*forwards, *collectors])
    commands = _Commands(handler, cluster, CommandOutcomes(registry))

    def new_id(key: str | None) -> str:
        if key is not None:
            return uuid.uuid5(KEYED_ORDER_NAMESPACE, key).hex
        # An id whose partition this instance holds, when one comes up soon: no forward.
        for _ in range(4 * handler.partitions):
            order_id = new_order_id()
            if handler.holds(handler.partition_of(order_id)):
                return order_id
        return order_id

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
    async def create_order(
        body: CreateOrderBody,
        request: Request,
        response: Response,
        received_at: ReceivedAt,
        idempotency_key: IdempotencyKey = None,
    ) -> VersionModel | Response:
        order_id = body.id if body.id is not None else new_id(idempotency_key)
        command = CreateOrder(order_id, body.user_id, body.product_id, body.quantity, body.price)
        # Forwarded with the id chosen here, so the holder creates this very order.
        named = json.dumps({**body.model_dump(), "id": order_id}).encode()
        created = await commands.run(
            command,
            request,
            response,
            received_at,
            idempotency_key,
            order_id_in="body",
            body=named,
        )
        if not isinstance(created, Response):  # a forwarded answer has its own Location
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
    async def change_price(
        order_id: OrderId,
        body: ChangePriceBody,
        request: Request,
        response: Response,
        received_at: ReceivedAt,
        if_match: IfMatch = None,
        idempotency_key: IdempotencyKey = None,
    ) -> VersionModel | Response:
        expected = _expected(if_match, body.expected_version)
        command = ChangePrice(order_id, body.price, expected)
        return await commands.run(command, request, response, received_at, idempotency_key)

    @change_route("quantity", "Change an order's quantity")
    async def change_quantity(
        order_id: OrderId,
        body: ChangeQuantityBody,
        request: Request,
        response: Response,
        received_at: ReceivedAt,
        if_match: IfMatch = None,
        idempotency_key: IdempotencyKey = None,
    ) -> VersionModel | Response:
        expected = _expected(if_match, body.expected_version)
        command = ChangeQuantity(order_id, body.quantity, expected)
        return await commands.run(command, request, response, received_at, idempotency_key)

    @change_route("product", "Change an order's product")
    async def change_product(
        order_id: OrderId,
        body: ChangeProductBody,
        request: Request,
        response: Response,
        received_at: ReceivedAt,
        if_match: IfMatch = None,
        idempotency_key: IdempotencyKey = None,
    ) -> VersionModel | Response:
        expected = _expected(if_match, body.expected_version)
        command = ChangeProduct(order_id, body.product_id, expected)
        return await commands.run(command, request, response, received_at, idempotency_key)

    @change_route("cancel", "Cancel an order")
    async def cancel_order(
        order_id: OrderId,
        request: Request,
        response: Response,
        received_at: ReceivedAt,
        body: CancelOrderBody | None = None,
        if_match: IfMatch = None,
        idempotency_key: IdempotencyKey = None,
    ) -> VersionModel | Response:
        body = body or CancelOrderBody()
        expected = _expected(if_match, body.expected_version)
        command = CancelOrder(order_id, body.reason, expected)
        return await commands.run(command, request, response, received_at, idempotency_key)

    _add_reads(app, commands)
    return app


def _add_reads(app: FastAPI, commands: _Commands) -> None:
    handler = commands.handler

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
    async def get_order(order_id: OrderId, request: Request) -> Response:
        readiness = handler.readiness()
        if not readiness.ready:
            raise not_ready_problem(readiness)
        partition = handler.partition_of(order_id)
        if commands.cluster is not None and not handler.holds(partition):
            return await commands.forward(partition, request, None)
        state = await run_in_threadpool(handler.current, order_id)
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
