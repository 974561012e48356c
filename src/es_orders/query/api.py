"""The query service's HTTP API: order states of the whole cluster, its members, health.

What the routes answer comes from ``reads.ClusterReads``: this instance's stores for the
partitions it holds, the other instances for theirs. Bodies come out of the stores
already encoded (each order's state JSON), so the handlers pass those bytes through: a
page is the rows joined into one JSON array, never decoded and re-encoded. Their schema
in the OpenAPI document is the order state's one definition, shared with the command
service (``http.openapi``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import FastAPI, Header, Path, Query, Request, Response
from prometheus_client.registry import Collector
from pydantic import AwareDatetime

from es_orders import __version__
from es_orders.http import install_problem_handlers, problem_responses
from es_orders.http.health import add_health_routes
from es_orders.http.metrics import ForwardCollector, install_metrics
from es_orders.http.openapi import (
    JSON_MEDIA_TYPE,
    install_openapi,
    order_state_content,
    order_states_content,
)
from es_orders.http.problems import InvalidInput, validation_problem
from es_orders.query.changes import ChangeFeed, add_change_routes
from es_orders.query.dashboard import add_dashboard_routes
from es_orders.query.members import Directory, new_instance_id
from es_orders.query.models import ClusterModel, StatsModel
from es_orders.query.reads import FORWARDED_FROM, ClusterReads
from es_orders.query.routing import SERVED_BY, Cluster
from es_orders.runtime.views import OrderView

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Read your writes: how long GET /orders/{id}?min_version= waits by default, and at most.
DEFAULT_WAIT = 5.0
MAX_WAIT = 30.0
MAX_VERSION = 2**63 - 1  # a SQLite INTEGER
# A page of GET /orders/{id}/events. The event's own schema is the wire format's
# (docs/architecture.md): any of the five event types.
EVENT_PAGE_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["version", "partition", "offset", "timestamp", "event"],
        "properties": {
            "version": {"type": "integer", "minimum": 1},
            "partition": {"type": "integer", "minimum": 0},
            "offset": {"type": "integer", "minimum": 0},
            "timestamp": {"type": "string", "format": "date-time"},
            "event": {"type": "object", "description": "The event's wire JSON."},
        },
    },
}


def _next_link(request: Request, limit: int, last_id: str, scope: str) -> str:
    # safe="" so ids holding "/", "&", ">" or "," cannot break the query or the header.
    query = f"limit={limit}&after={quote(last_id, safe='')}"
    if scope != "cluster":
        query += f"&scope={scope}"
    root = request.scope.get("root_path", "")
    return f'<{root}/orders?{query}>; rel="next"'


def _one_of(**given: object) -> None:
    """Refuse a read that names more than one point in the order's life."""
    named = [name for name, value in given.items() if value is not None]
    if len(named) > 1:
        raise validation_problem(
            [
                InvalidInput(
                    ("query", name), f"give one of {', '.join(given)}, not several", given[name]
                )
                for name in named
            ]
        )


def create_query_app(
    view: OrderView,
    cluster: Cluster | None = None,
    collectors: Iterable[Collector] = (),
    changes: ChangeFeed | None = None,
) -> FastAPI:
    """The query service's FastAPI app, answering from ``view`` and, for partitions other
    instances hold, through ``cluster`` (default: an instance that knows no other).
    ``GET /metrics`` has the figures of ``collectors`` (the fold's) besides the app's own.
    ``GET /changes`` streams from ``changes`` (None: it answers 503); ``GET /`` is the
    dashboard.

    The handlers are ``async`` although the view reads SQLite: a read is tens of
    microseconds on a connection the thread keeps, while handing it to the threadpool
    means two more waits for the GIL.
    """

    if cluster is None:
        cluster = Cluster(new_instance_id(), "http://127.0.0.1", view.partitions, Directory())
    members = cluster

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await members.close()

    app = FastAPI(
        title="es-orders query service",
        version=__version__,
        description="Interactive queries over the order states of every instance of this "
        "application: any instance answers for any order, forwarding to the one that holds "
        "it.",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    install_openapi(app)
    install_metrics(app, [ForwardCollector(cluster.forwards), *collectors])
    reads = ClusterReads(view, cluster)

    @app.get(
        "/orders",
        tags=["orders"],
        summary="List order states of the whole cluster, ordered by id",
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
        scope: Annotated[
            Literal["cluster", "local"],
            Query(
                description="cluster: every order, from the instances that hold them; "
                "local: this instance's partitions only."
            ),
        ] = "cluster",
        partitions: Annotated[
            str | None,
            Query(
                pattern=r"^[0-9]{1,4}(,[0-9]{1,4}){0,999}$",
                description="With scope=local: only these partitions, comma-separated (503 "
                "if one is not held here). How an instance asks another for its part of a "
                "page.",
                examples=["0,2"],
            ),
        ] = None,
    ) -> Response:
        if scope == "local":
            wanted = None if partitions is None else sorted({int(n) for n in partitions.split(",")})
            page, more = reads.local_page(after, limit, wanted)
        else:
            page, more = await reads.cluster_page(after, limit)
        body = b"[" + b",".join(state for _, state in page) + b"]"
        headers = {}
        if more:
            headers["Link"] = _next_link(request, limit, page[-1][0], scope)
        return Response(content=body, media_type=JSON_MEDIA_TYPE, headers=headers)

    # Declared before /orders/{order_id:path}, which would take "x/events" for an id.
    @app.get(
        "/orders/{order_id:path}/events",
        tags=["orders"],
        summary="An order's events in version order: its history",
        responses={
            200: {
                "description": "A page of the order's events, each its wire JSON (`event`) "
                "with the partition, offset and timestamp of its record; a legacy record "
                'appears as the events it was upcast into. `Link: <…>; rel="next"` when '
                "more follow.",
                "content": {JSON_MEDIA_TYPE: {"schema": EVENT_PAGE_SCHEMA}},
                "headers": {"Link": {"schema": {"type": "string"}}},
            },
            **problem_responses(404, 422, 500, 501, 503),
        },
    )
    async def get_order_events(
        request: Request,
        order_id: Annotated[str, Path(description="The order's id.", examples=["1"])],
        limit: Annotated[
            int, Query(ge=1, le=MAX_PAGE_SIZE, description="Events per page.")
        ] = DEFAULT_PAGE_SIZE,
        after_version: Annotated[
            int, Query(ge=0, le=MAX_VERSION, description="Return events after this version.")
        ] = 0,
    ) -> Response:
        return await reads.events(
            order_id,
            after_version=after_version,
            limit=limit,
            root=request.scope.get("root_path", ""),
            forwarded=FORWARDED_FROM in request.headers,
        )

    # ":path" lets an id holding "/" (ids are any string) be fetched as /orders/a%2Fb.
    @app.get(
        "/orders/{order_id:path}",
        tags=["orders"],
        summary="Get one order's state, from whichever instance holds it",
        responses={
            200: {
                "description": "The order's state; its ETag is its version. `Served-By` names "
                "the instance whose store answered.",
                "content": order_state_content(),
                "headers": {
                    "ETag": {"schema": {"type": "string"}, "example": '"7"'},
                    SERVED_BY: {"schema": {"type": "string"}, "example": "http://127.0.0.1:8887"},
                },
            },
            304: {"description": "The state still has the version named in If-None-Match."},
            **problem_responses(404, 422, 500, 501, 503),
        },
    )
    async def get_order(
        request: Request,
        order_id: Annotated[str, Path(description="The order's id.", examples=["1"])],
        if_none_match: Annotated[str | None, Header()] = None,
        min_version: Annotated[
            int | None,
            Query(
                ge=1,
                description="Answer only with a state at this version or later (read your "
                "writes: the version a command answered with).",
            ),
        ] = None,
        wait: Annotated[
            float,
            Query(
                ge=0,
                le=MAX_WAIT,
                description="With min_version: how many seconds to wait for that version "
                "before a 503 version-not-visible; 0 answers at once.",
            ),
        ] = DEFAULT_WAIT,
        version: Annotated[
            int | None,
            Query(
                ge=1,
                le=MAX_VERSION,
                description="Time travel: the state the order had at this version (its "
                "events up to it, folded); 404 if it was created later.",
            ),
        ] = None,
        as_of: Annotated[
            AwareDatetime | None,
            Query(
                description="Time travel: the state the order had at this instant (RFC 3339, "
                "with its offset), from its events recorded by then; 404 if it was "
                "created later.",
                examples=["2026-11-30T17:00:00Z"],
            ),
        ] = None,
    ) -> Response:
        forwarded = FORWARDED_FROM in request.headers
        if version is not None or as_of is not None:
            _one_of(version=version, as_of=as_of, min_version=min_version)
            return await reads.order_at(
                order_id,
                version=version,
                as_of=as_of,
                if_none_match=if_none_match,
                forwarded=forwarded,
            )
        return await reads.order(
            order_id,
            if_none_match=if_none_match,
            min_version=min_version,
            wait=wait,
            forwarded=forwarded,
        )

    @app.get(
        "/cluster",
        tags=["cluster"],
        summary="Every query instance of this application: URL, partitions, readiness, lag",
        response_model=ClusterModel,
        responses=problem_responses(500),
    )
    async def get_cluster() -> ClusterModel:
        return reads.members()

    add_health_routes(
        app,
        reads.readiness,
        ready_summary="Readiness: every partition this instance holds restored and caught up",
    )

    @app.get(
        "/stats",
        tags=["health"],
        summary="Counters of this instance's fold since it started",
        response_model=StatsModel,
        responses=problem_responses(500),
    )
    async def stats() -> StatsModel:
        return StatsModel.model_validate(view.stats())

    add_change_routes(app, changes)
    add_dashboard_routes(app)
    return app
