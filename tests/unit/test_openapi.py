"""The OpenAPI documents of both services: what they publish is what the services do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema_rs  # comes with schemathesis (the dev extra)
import pytest
from fastapi.testclient import TestClient

from es_orders.query import create_query_app
from tests.unit.command_support import ApiService
from tests.unit.query_support import InMemoryView, state_json

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
MAX_INT = 2**63 - 1


@pytest.fixture
def command() -> ApiService:
    return ApiService()


@pytest.fixture
def query_view() -> InMemoryView:
    return InMemoryView()


@pytest.fixture
def query(query_view: InMemoryView) -> TestClient:
    return TestClient(create_query_app(query_view))


def document(client: TestClient) -> dict[str, Any]:
    text = client.get("/openapi.json").text
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def bounds(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every numeric bound in a JSON document, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in BOUNDS:
                yield f"{where}/{key}", value
            yield from bounds(value, f"{where}/{key}")
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield from bounds(value, f"{where}/{n}")


def test_integer_bounds_are_published_as_exact_integers(
    command: ApiService, query: TestClient
) -> None:
    for client in (command.client, query):
        found = dict(bounds(document(client)))
        assert found
        floats = {where: value for where, value in found.items() if not isinstance(value, int)}
        assert floats == {}
    price = document(command.client)["components"]["schemas"]["ChangePriceBody"]["properties"]
    assert price["price"]["maximum"] == MAX_INT


def test_the_documented_price_maximum_is_accepted_and_one_more_is_not(
    command: ApiService,
) -> None:
    schemas = document(command.client)["components"]["schemas"]
    maximum = schemas["ChangePriceBody"]["properties"]["price"]["maximum"]
    command.create("1")
    accepted = command.client.post("/orders/1/price", json={"price": maximum})
    assert accepted.status_code == 200, accepted.text
    refused = command.client.post("/orders/1/price", json={"price": maximum + 1})
    assert refused.status_code == 422


def state_schema(client: TestClient) -> dict[str, Any]:
    """The 200 body schema of GET /orders/{order_id}, its references resolved."""
    doc = document(client)
    ok = doc["paths"]["/orders/{order_id}"]["get"]["responses"]["200"]
    schema: dict[str, Any] = ok["content"]["application/json"]["schema"]
    return {**schema, "components": doc["components"]}


def test_both_services_publish_one_order_state_schema(
    command: ApiService, query: TestClient
) -> None:
    command_doc, query_doc = document(command.client), document(query)
    command_ref = state_schema(command.client)["$ref"]
    assert command_ref == state_schema(query)["$ref"]
    name = command_ref.rsplit("/", 1)[1]
    assert command_doc["components"]["schemas"][name] == query_doc["components"]["schemas"][name]
    listed = query_doc["paths"]["/orders"]["get"]["responses"]["200"]["content"]
    assert listed["application/json"]["schema"] == {"type": "array", "items": {"$ref": command_ref}}


def test_the_state_schema_allows_every_id_the_command_service_accepts(
    command: ApiService,
) -> None:
    doc = document(command.client)
    create_id = doc["components"]["schemas"]["CreateOrderBody"]["properties"]["id"]
    longest = next(s["maxLength"] for s in create_id["anyOf"] if s.get("type") == "string")
    name = state_schema(command.client)["$ref"].rsplit("/", 1)[1]
    assert doc["components"]["schemas"][name]["properties"]["id"]["maxLength"] == longest


def test_the_longest_id_is_created_and_served_as_the_schema_says(
    command: ApiService, query: TestClient, query_view: InMemoryView
) -> None:
    order_id = "L" + "o" * 255
    created = command.create(order_id)
    assert created.status_code == 201, created.text
    assert command.create(order_id + "g").status_code == 422
    from_command = command.client.get(f"/orders/{order_id}")
    assert from_command.status_code == 200
    jsonschema_rs.validate(state_schema(command.client), from_command.json())
    query_view.put(order_id, state_json(order_id))
    from_query = query.get(f"/orders/{order_id}")
    assert from_query.status_code == 200
    jsonschema_rs.validate(state_schema(query), from_query.json())


def test_published_state_schema_refuses_what_the_codec_would(query: TestClient) -> None:
    schema = state_schema(query)
    valid = json.loads(state_json("1"))
    jsonschema_rs.validate(schema, valid)
    for broken in ({"version": 0}, {"status": "lost"}, {"id": ""}, {"quantity": 0}):
        with pytest.raises(jsonschema_rs.ValidationError):
            jsonschema_rs.validate(schema, {**valid, **broken})


def test_every_documented_error_is_a_problem(command: ApiService, query: TestClient) -> None:
    for client in (command.client, query):
        for path, operations in document(client)["paths"].items():
            for method, operation in operations.items():
                for status, answer in operation["responses"].items():
                    if int(status) >= 400:
                        assert set(answer["content"]) == {"application/problem+json"}, (
                            method,
                            path,
                            status,
                        )
