"""``GET /metrics`` on both services: Prometheus text from a registry of the app's own.

Each app has its own ``CollectorRegistry``, not prometheus_client's global one: a
service's figures are its app's, and tests building many apps in one process keep them
apart. The app measures one thing itself, every request's duration by method, route and
status, where the route is the template that matched (``/orders/{order_id:path}``), never
the path the client sent: one series per route, however many orders there are. The rest
is read from where it is kept at the moment of a scrape, by collectors the app is given:
the fold's figures (``runtime.metrics``), the requests this instance forwarded
(``ForwardCollector``), the command service's outcomes (``command.metrics``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping

from fastapi import FastAPI, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from es_orders.http.problems import problem_responses

METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"  # the route of a request no route took (a 404); routes start "/"
# Reads take well under a millisecond; a read waiting for its version, up to 30 s.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _route_of(scope: Scope, routes: Iterable[BaseRoute]) -> str:
    """The template of the route that took the request (the router names it in the scope),
    or, for a request a middleware answered before the router saw it (a 401), of the route
    that would have."""
    route = scope.get("route")
    if route is None:
        partial = None
        for candidate in routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = candidate
                break
            if match is Match.PARTIAL and partial is None:
                partial = candidate
        route = route or partial
    path = getattr(route, "path", None)
    if path is None:
        return UNMATCHED
    return str(path) or "/"  # a mount at the root has the empty path


class RequestDurationMiddleware:
    """Observes each HTTP request's duration, to the last byte of its answer, in
    ``histogram`` by method, route and status. Outside the app's other middleware, so that
    the answers they give (401, 413, 500) are counted too."""

    def __init__(self, app: ASGIApp, histogram: Histogram, router: Router) -> None:
        self.app = app
        self.histogram = histogram
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before its answer starts

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            labels = (scope["method"], _route_of(scope, self.router.routes), str(status))
            self.histogram.labels(*labels).observe(time.perf_counter() - started)


class ForwardCollector:
    """The requests this instance forwarded to the instance holding their partition:
    ``forwards`` counts them by (method, outcome), as ``query.routing.Cluster`` keeps them."""

    def __init__(self, forwards: Mapping[tuple[str, str], int]) -> None:
        self._forwards = forwards

    def collect(self) -> Iterator[Metric]:
        forwarded = CounterMetricFamily(
            "es_orders_forwarded_requests",
            "Requests forwarded to the instance holding their partition, by method and "
            "outcome: the holder's status code, no_connection (never sent) or no_answer "
            "(sent, no answer in time).",
            labels=["method", "outcome"],
        )
        for (method, outcome), count in sorted(self._forwards.items()):
            forwarded.add_metric([method, outcome], count)
        yield forwarded


def install_metrics(app: FastAPI, collectors: Iterable[Collector] = ()) -> CollectorRegistry:
    """Serve ``GET /metrics`` on ``app``: its request durations, this process's figures
    (``process_*``) and those of ``collectors``; the registry, for more.

    Call after adding the app's other middleware (see ``RequestDurationMiddleware``).
    """
    # Each series' creation time, as a series of its own (``*_created``): twice the
    # output, for what a counter's drop to zero already tells. A switch of the process.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    durations = Histogram(
        "es_orders_http_request_duration_seconds",
        "HTTP requests by method, route template and status, and how long each took to "
        "answer, to the last byte.",
        ["method", "route", "status"],
        buckets=DURATION_BUCKETS,
        registry=registry,
    )
    for collector in collectors:
        registry.register(collector)
    app.add_middleware(RequestDurationMiddleware, histogram=durations, router=app.router)

    @app.get(
        METRICS_PATH,
        tags=["health"],
        summary="Figures of this instance in the Prometheus text format",
        response_class=PlainTextResponse,
        responses={
            200: {
                "description": "Every metric of this instance (the README lists them), as "
                "Prometheus scrapes them."
            },
            **problem_responses(500),
        },
    )
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return registry
