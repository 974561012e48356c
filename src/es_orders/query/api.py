"""The query service's HTTP API: order states and health, read from an ``OrderView``.

Bodies come out of the view already encoded (the store keeps each order's state JSON),
so the handlers pass those bytes through: a page is the rows joined into one JSON array,
never decoded and re-encoded. Their schema in the OpenAPI document is the order state's
one definition, shared with the command service (``http.openapi``).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import FastAPI, Header, Path, Query, Request, Response
from pydantic import BaseModel, Field

from es_orders import __version__
from es_orders.codec import state_version
from es_orders.http import install_problem_handlers, problem_responses
from es_orders.http.health import add_health_routes
from es_orders.http.openapi import (
    JSON_MEDIA_TYPE,
    install_openapi,
    order_state_content,
    order_states_content,
)
from es_orders.http.problems import order_not_found_problem, partition_unavailable_problem
from es_orders.runtime.views import OrderView, PartitionNotHeldError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class WorkerModel(BaseModel):
    """One fold worker process of this instance."""

    index: int
    pid: int | None
    alive: bool = Field(description="Whether its process runs (one that exits is replaced).")
    restarts: int = Field(description="How often this worker was replaced after exiting.")
    partitions: list[int] = Field(description="Partitions it holds.")
    rss_bytes: int = Field(description="Resident memory of its process now.")
    peak_rss_bytes: int = Field(description="The most resident memory its process has had.")
    cache_entries: int = Field(description="Order states in its cache.")
    cache_bytes: int = Field(description="Estimated size of its cache.")
    cache_limit_bytes: int = Field(description="Its cache's budget (--cache-mb).")


class PartitionModel(BaseModel):
    """One partition a fold worker of this instance holds."""

    worker: int = Field(description="Index of the worker that holds it.")
    phase: str = Field(description="restoring, catching-up or caught-up.")
    assigned_at: float = Field(description="Unix time it was assigned to its worker.")
    restored_records: int = Field(description="Changelog records restored since then.")
    restore_seconds: float | None = Field(description="How long its restore took; null before.")
    consumed: int | None = Field(description="Next offset of the events topic to fold.")
    caught_up_at: float | None = Field(
        description="Unix time it was last read to the end of the events topic."
    )


class StatsModel(BaseModel):
    """The fold's counters since this process started (over all its fold workers, also
    those replaced), each worker's process and cache, and each held partition."""

    consumed: int = Field(description="Records of the events topic consumed.")
    changed: int = Field(description="Order states written (each also to the changelog).")
    duplicates: int = Field(description="Events skipped as already applied.")
    gaps: int = Field(description="Events applied after a version gap.")
    replayed: int = Field(description="Records at or below a stored order's offset, skipped.")
    dead_letters: int = Field(description="Records sent to the dead letter topic.")
    changelog_records: int
    restored_records: int = Field(description="Changelog records read to restore partitions.")
    batches: int = Field(description="Batches checkpointed.")
    first_record_at: float = Field(description="Unix time of the first record consumed; 0 if none.")
    last_checkpoint_at: float = Field(description="Unix time of the last checkpoint; 0 if none.")
    workers: list[WorkerModel] = Field(default_factory=list)
    partitions: dict[int, PartitionModel] = Field(default_factory=dict)


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
    install_openapi(app)

    @app.get(
        "/orders",
        tags=["orders"],
        summary="List order states, ordered by id",
        responses={
            200: {
                "description": 'A page of orders; a `Link: <…>; rel="next"` header when more.',
                "content": order_states_content(),
                "headers": {"Link": {"schema": {"type": "string"}}},
            },
            **problem_responses(422, 500, 503),
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
        try:
            rows = view.page(after, limit + 1)
        except PartitionNotHeldError as exc:
            raise partition_unavailable_problem(exc.partition) from exc
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
        responses={
            200: {
                "description": "The order's state; its ETag is its version.",
                "content": order_state_content(),
                "headers": {"ETag": {"schema": {"type": "string"}, "example": '"7"'}},
            },
            304: {"description": "The state still has the version named in If-None-Match."},
            **problem_responses(404, 500, 503),
        },
    )
    async def get_order(
        order_id: Annotated[str, Path(description="The order's id.", examples=["1"])],
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        try:
            state = view.get(order_id)
        except PartitionNotHeldError as exc:
            raise partition_unavailable_problem(exc.partition) from exc
        if state is None:
            raise order_not_found_problem(order_id)
        etag = _etag(state_version(state))
        if if_none_match is not None and _matches_any(if_none_match, etag):
            return Response(status_code=304, headers={"ETag": etag})
        return Response(content=state, media_type=JSON_MEDIA_TYPE, headers={"ETag": etag})

    add_health_routes(
        app,
        view.readiness,
        ready_summary="Readiness: every assigned partition restored and caught up",
    )

    @app.get(
        "/stats",
        tags=["health"],
        summary="Counters of the fold since this process started",
        response_model=StatsModel,
        responses=problem_responses(500),
    )
    async def stats() -> StatsModel:
        return StatsModel.model_validate(view.stats())

    return app
