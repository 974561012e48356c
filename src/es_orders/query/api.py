"""The query service's HTTP API: order states and health, read from an ``OrderView``.

Bodies come out of the view already encoded (the store keeps each order's state JSON),
so the handlers pass those bytes through: a page is the rows joined into one JSON array,
never decoded and re-encoded. The pydantic models below exist for the OpenAPI document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import FastAPI, Header, Query, Request, Response
from pydantic import BaseModel, Field

from es_orders import __version__
from es_orders.codec import state_version
from es_orders.http import ProblemError, install_problem_handlers, problem_responses, problem_type
from es_orders.http.health import add_health_routes
from es_orders.runtime.views import OrderView

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
JSON_MEDIA_TYPE = "application/json"
ORDER_NOT_FOUND_TYPE = problem_type("order-not-found")


class OrderStateModel(BaseModel):
    """One order's current state (docs/architecture.md, "Order state").

    Fields other than ``id``, ``status``, ``version`` and the timestamps are null for an
    order first seen through a legacy partial update.
    """

    id: str = Field(examples=["1"])
    user_id: str | None = Field(examples=["1"])
    product_id: str | None = Field(examples=["57"])
    quantity: int | None = Field(ge=1, examples=[69])
    price: int | None = Field(ge=0, description="In minor units.", examples=[12])
    status: Literal["open", "cancelled"]
    version: int = Field(ge=1, description="Number of events folded into this state.")
    created_at: datetime
    updated_at: datetime


def _etag(version: int) -> str:
    return f'"{version}"'


def _matches_any(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag``, compared weakly as RFC 9110 asks for GET."""
    candidates = (tag.strip() for tag in if_none_match.split(","))
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in candidates)


def _next_link(request: Request, limit: int, last_id: str) -> str:
    # safe="" so ids holding "/", "&", ">" or "," cannot break the query or the header.
    query = f"limit={limit}&after={quote(last_id, safe='')}"
    root = request.scope.get("root_path", "")
    return f'<{root}/orders?{query}>; rel="next"'


def create_query_app(view: OrderView) -> FastAPI:
    """The query service's FastAPI app, answering from ``view``.

    The handlers are ``async`` although the view reads SQLite: a read is tens of
    microseconds on a connection the thread keeps, while handing it to the threadpool
    means two more waits for the GIL, which the fold loop holds most of the time.
    """
    app = FastAPI(
        title="es-orders query service",
        version=__version__,
        description="Interactive queries over the order states this instance materializes.",
    )
    install_problem_handlers(app)

    @app.get(
        "/orders",
        tags=["orders"],
        summary="List order states, ordered by id",
        response_model=list[OrderStateModel],
        responses={
            200: {
                "description": 'A page of orders; a `Link: <…>; rel="next"` header when more.',
                "headers": {"Link": {"schema": {"type": "string"}}},
            },
            **problem_responses(422, 500),
        },
    )
    async def list_orders(
        request: Request,
        limit: Annotated[
            int, Query(ge=1, le=MAX_PAGE_SIZE, description="Orders per page.")
        ] = DEFAULT_PAGE_SIZE,
        after: Annotated[
            str | None, Query(description="Return orders whose id sorts after this one.")
        ] = None,
    ) -> Response:
        # One row beyond the page tells whether a next page exists without a second query.
        rows = view.page(after, limit + 1)
        page = rows[:limit]
        body = b"[" + b",".join(state for _, state in page) + b"]"
        headers = {}
        if len(rows) > limit:
            headers["Link"] = _next_link(request, limit, page[-1][0])
        return Response(content=body, media_type=JSON_MEDIA_TYPE, headers=headers)

    # ":path" lets an id holding "/" (ids are any string) be fetched as /orders/a%2Fb.
    @app.get(
        "/orders/{order_id:path}",
        tags=["orders"],
        summary="Get one order's state",
        response_model=OrderStateModel,
        responses={
            200: {
                "description": "The order's state; its ETag is its version.",
                "headers": {"ETag": {"schema": {"type": "string"}, "example": '"7"'}},
            },
            304: {"description": "The state still has the version named in If-None-Match."},
            **problem_responses(404, 500),
        },
    )
    async def get_order(
        order_id: str,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        state = view.get(order_id)
        if state is None:
            raise ProblemError(
                404,
                f'no order with id "{order_id}"',
                title="Order not found",
                type=ORDER_NOT_FOUND_TYPE,
                extra={"order_id": order_id},
            )
        etag = _etag(state_version(state))
        if if_none_match is not None and _matches_any(if_none_match, etag):
            return Response(status_code=304, headers={"ETag": etag})
        return Response(content=state, media_type=JSON_MEDIA_TYPE, headers={"ETag": etag})

    add_health_routes(
        app,
        view.readiness,
        ready_summary="Readiness: every assigned partition restored and caught up",
    )

    @app.get("/stats", tags=["health"], summary="Counters of the fold since this process started")
    async def stats() -> dict[str, float]:
        return view.stats()

    return app
