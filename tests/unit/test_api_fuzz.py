"""Schema-driven fuzzing of both services' OpenAPI documents, in-process (no network, no Kafka).

Schemathesis generates requests from each service's ``/openapi.json`` (values the schema
allows, and values it does not) and sends them straight to the ASGI app, whose seams are
the in-memory stand-ins of the other unit tests. A test fails on any 5xx, and on any
answer the document does not describe: an undocumented status, media type or header, a
body that does not match its schema, or invalid input that is accepted.

Generation is deterministic and bounded (``MAX_EXAMPLES`` per operation), so a run takes
seconds and a failure reproduces. A command service that is still restoring is fuzzed
too (fewer examples: it answers every command alike), for its 503s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from es_orders.command import create_command_app
from es_orders.domain import CreateOrder
from es_orders.query import create_query_app
from tests.unit.command_support import LaggingView, RecordingLog, Switch, make_handler
from tests.unit.query_support import InMemoryView, fill

MAX_EXAMPLES = 75
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
CHECKS = [not_a_server_error, *CONFORMANCE]
SEEDED_IDS = ["1", "2", "order-3"]


def command_app() -> FastAPI:
    handler = make_handler(LaggingView(), RecordingLog(), Switch())
    for order_id in SEEDED_IDS:  # so generated changes also meet orders that exist
        handler.handle(CreateOrder(order_id, "u1", "57", 2, 12))
    return create_command_app(handler)


def restoring_command_app() -> FastAPI:
    """A command service whose view is still restoring: every command and read is a 503."""
    ready = Switch()
    ready.off("partition 0: restoring")
    return create_command_app(make_handler(LaggingView(), RecordingLog(), ready))


def query_app() -> FastAPI:
    view = InMemoryView()
    fill(view, [*SEEDED_IDS, "a b", "x/y"])
    return create_query_app(view)


def load(app: FastAPI, max_examples: int = MAX_EXAMPLES) -> Any:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=max_examples,
        deterministic=True,
    )
    return schema


Test = Callable[[Any], None]
command_cases: Callable[[Test], Test] = load(command_app()).parametrize()
restoring_command_cases: Callable[[Test], Test] = load(restoring_command_app(), 15).parametrize()
query_cases: Callable[[Test], Test] = load(query_app()).parametrize()
fuzz_settings = settings(deadline=None, suppress_health_check=list(HealthCheck))


@command_cases
@fuzz_settings
def test_the_command_service_answers_as_documented(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


@restoring_command_cases
@fuzz_settings
def test_a_restoring_command_service_answers_as_documented(case: Any) -> None:
    response = case.call_and_validate(checks=CONFORMANCE)
    if response.status_code >= 500:
        assert response.status_code == 503, response.text
        assert response.json()["type"] == "https://es-orders.dev/problems/not-ready"


@query_cases
@fuzz_settings
def test_the_query_service_answers_as_documented(case: Any) -> None:
    # A read of a version the order does not have waits up to ``wait`` seconds (up to
    # 30) for it: wait at most 10 ms here. Values that are not valid stay as generated.
    query = case.query or {}
    wait = query.get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 <= wait <= 30:
        query["wait"] = min(wait, 0.01)
    response = case.call_and_validate(checks=CONFORMANCE)
    if response.status_code >= 500 and case.path == "/changes":
        # An app without a broker has no changes to stream.
        assert response.status_code == 503, response.text
        assert response.json()["type"] == "https://es-orders.dev/problems/changes-unavailable"
    elif response.status_code == 501:
        # The stand-in view keeps no history: what a service with ES_ORDERS_HISTORY=off says.
        assert case.path.endswith("/events") or {"version", "as_of"} & set(query), case.path
        assert response.json()["type"] == "https://es-orders.dev/problems/history-off"
    elif response.status_code >= 500:
        # The one 5xx the stand-in view can cause: min_version beyond the order's version.
        assert response.status_code == 503, response.text
        assert response.json()["type"] == "https://es-orders.dev/problems/version-not-visible"
        assert response.headers["retry-after"] == ["1"]
