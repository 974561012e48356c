"""One problem per kind of failure: the same body wherever a client meets it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response

from es_orders.http import CATALOGUE
from es_orders.query import create_query_app
from es_orders.runtime.views import Readiness
from tests.unit.command_support import ApiService, problem
from tests.unit.query_support import InMemoryView

NOT_READY = "https://es-orders.dev/problems/not-ready"
VALIDATION_ERROR = "https://es-orders.dev/problems/validation-error"
ORDER_NOT_FOUND = "https://es-orders.dev/problems/order-not-found"


def shape(response: Response, status: int, type_: str) -> tuple[frozenset[str], str | None]:
    body = problem(response, status, type_)
    return frozenset(body), response.headers.get("retry-after")


def test_not_ready_is_one_problem_on_every_route_of_both_services() -> None:
    command = ApiService()
    command.ready.off("partition 0: restoring")
    view = InMemoryView(Readiness(False, ("partition 0: restoring",), {0: "restoring"}))
    query = TestClient(create_query_app(view))

    answers = {
        "command write": command.create("1"),
        "command read": command.client.get("/orders/1"),
        "command readiness": command.client.get("/health/ready"),
        "query readiness": query.get("/health/ready"),
    }

    shapes = {where: shape(answer, 503, NOT_READY) for where, answer in answers.items()}
    assert set(shapes.values()) == {
        (
            frozenset({"type", "title", "status", "detail", "waiting_for", "partitions"}),
            "1",
        )
    }, shapes
    for answer in answers.values():
        body = answer.json()
        assert body["waiting_for"] == ["partition 0: restoring"]
        assert body["partitions"] == {"0": "restoring"}


def error_items(response: Response) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = problem(response, 422, VALIDATION_ERROR)["errors"]
    assert items
    return items


def test_every_422_lists_its_errors_in_one_shape() -> None:
    service = ApiService()
    service.create("1")
    post = service.client.post
    answers = {
        "schema": post("/orders/1/price", json={"price": -1}),
        "type": post("/orders/1/price", json={"price": "1"}),
        "missing": post("/orders/1/price", json={}),
        "unknown member": post("/orders/1/price", json={"price": 1, "colour": "red"}),
        "malformed": post(
            "/orders/1/price", content=b"{", headers={"content-type": "application/json"}
        ),
        "rule in path": post("/orders/-bad/price", json={"price": 1}),
        "rule in body": post(
            "/orders",
            json={"id": "a b", "user_id": "u", "product_id": "p", "quantity": 1, "price": 1},
        ),
        "if-match": post("/orders/1/price", json={"price": 2}, headers={"If-Match": "seven"}),
    }
    for where, answer in answers.items():
        for item in error_items(answer):
            assert set(item) == {"loc", "msg", "type", "input"}, (where, item)
            assert isinstance(item["loc"], list) and item["loc"], (where, item)
            assert item["loc"][0] in {"body", "path", "header"}, (where, item)
            assert isinstance(item["msg"], str) and isinstance(item["type"], str), (where, item)
    assert error_items(answers["rule in path"])[0]["input"] == "-bad"
    assert error_items(answers["if-match"])[0]["input"] == "seven"


def test_an_unknown_order_is_the_same_404_on_both_services() -> None:
    command = ApiService()
    query = TestClient(create_query_app(InMemoryView()))
    from_command = problem(command.client.get("/orders/nope"), 404, ORDER_NOT_FOUND)
    from_query = problem(query.get("/orders/nope"), 404, ORDER_NOT_FOUND)
    assert from_command == from_query
    assert from_query["order_id"] == "nope"


def test_the_readme_lists_every_problem_type_with_its_status() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = [
        line for line in readme.splitlines() if line.startswith("| 4") or line.startswith("| 5")
    ]
    for kind in CATALOGUE:
        assert any(
            line.startswith(f"| {kind.status} |") and f"`{kind.slug}`" in line for line in rows
        ), kind
