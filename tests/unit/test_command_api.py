"""The command API without a broker: status codes and problem bodies of every rule."""

from __future__ import annotations

import json
from typing import Any

import pytest

from es_orders.http import PROBLEM_MEDIA_TYPE
from es_orders.http.problems import (
    NOT_READY,
    ORDER_CANCELLED,
    ORDER_EXISTS,
    ORDER_IN_DOUBT,
    ORDER_NOT_FOUND,
    VALIDATION_ERROR,
    WRITE_NOT_ACKNOWLEDGED,
)
from tests.unit.command_support import ORDER, ApiService, problem

NOT_ACKNOWLEDGED_TYPE = WRITE_NOT_ACKNOWLEDGED.type
NOT_READY_TYPE = NOT_READY.type
ORDER_CANCELLED_TYPE = ORDER_CANCELLED.type
ORDER_EXISTS_TYPE = ORDER_EXISTS.type
ORDER_IN_DOUBT_TYPE = ORDER_IN_DOUBT.type
ORDER_NOT_FOUND_TYPE = ORDER_NOT_FOUND.type
VALIDATION_ERROR_TYPE = VALIDATION_ERROR.type


@pytest.fixture
def service() -> ApiService:
    return ApiService()


def test_create_answers_201_with_location_etag_and_version(service: ApiService) -> None:
    response = service.create("42")
    assert response.status_code == 201
    # Order 42 is in partition 1 (murmur2), whose first event it is.
    assert response.json() == {"id": "42", "version": 1, "partition": 1, "offset": 0}
    assert response.headers["location"] == "/orders/42"
    assert response.headers["etag"] == '"1"'
    assert [e.version for e in service.log.of("42")] == [1]


def test_create_without_an_id_gets_a_generated_one(service: ApiService) -> None:
    response = service.client.post("/orders", json=ORDER)
    assert response.status_code == 201
    assert response.json()["id"] == "generated-id"
    assert response.headers["location"] == "/orders/generated-id"


def test_create_of_an_existing_id_is_409(service: ApiService) -> None:
    service.create("1")
    body = problem(service.create("1"), 409, ORDER_EXISTS_TYPE)
    assert body["order_id"] == "1"
    assert len(service.log.events) == 1


@pytest.mark.parametrize("path", ["price", "quantity", "product", "cancel"])
def test_a_change_to_an_unknown_order_is_404(service: ApiService, path: str) -> None:
    body = {"price": {"price": 1}, "quantity": {"quantity": 1}, "product": {"product_id": "9"}}
    response = service.client.post(f"/orders/nope/{path}", json=body.get(path, {}))
    assert problem(response, 404, ORDER_NOT_FOUND_TYPE)["order_id"] == "nope"


def test_each_change_appends_one_event_and_answers_the_new_version(service: ApiService) -> None:
    service.create("1")
    steps = [
        ("price", {"price": 13}),
        ("quantity", {"quantity": 3}),
        ("product", {"product_id": "58"}),
    ]
    for version, (path, body) in enumerate(steps, start=2):
        response = service.client.post(f"/orders/1/{path}", json=body)
        assert response.status_code == 200, response.text
        expected = {"id": "1", "version": version, "partition": 0, "offset": version - 1}
        assert response.json() == expected
        assert response.headers["etag"] == f'"{version}"'
    state = service.client.get("/orders/1")
    assert state.headers["etag"] == '"4"'
    assert (state.json()["price"], state.json()["quantity"], state.json()["product_id"]) == (
        13,
        3,
        "58",
    )


def test_a_change_to_the_current_value_is_an_idempotent_no_op(service: ApiService) -> None:
    service.create("1")
    response = service.client.post("/orders/1/price", json={"price": 12})
    assert response.status_code == 200
    # Nothing appended: the position is that of the order's last event.
    assert response.json() == {"id": "1", "version": 1, "partition": 0, "offset": 0}
    assert len(service.log.events) == 1


def test_cancel_is_idempotent_and_a_cancelled_order_refuses_changes(service: ApiService) -> None:
    service.create("1")
    cancelled = {"id": "1", "version": 2, "partition": 0, "offset": 1}
    assert service.client.post("/orders/1/cancel", json={"reason": "duplicate"}).json() == cancelled
    assert service.client.post("/orders/1/cancel").json() == cancelled
    response = service.client.post("/orders/1/quantity", json={"quantity": 5})
    assert problem(response, 409, ORDER_CANCELLED_TYPE)["order_id"] == "1"
    assert len(service.log.events) == 2


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("price", {"price": -1}, ["body", "price"]),
        ("price", {"price": "12"}, ["body", "price"]),
        ("price", {"price": 12.0}, ["body", "price"]),
        ("price", {"price": True}, ["body", "price"]),
        ("price", {"price": 2**63}, ["body", "price"]),
        ("price", {"price": 10**400}, ["body", "price"]),
        ("quantity", {"quantity": 0}, ["body", "quantity"]),
        ("quantity", {"amount": 3}, ["body", "quantity"]),
        ("product", {"product_id": ""}, ["body", "product_id"]),
        ("product", {"product_id": 58}, ["body", "product_id"]),
        ("cancel", {"reason": "x" * 300}, ["body", "reason"]),
    ],
)
def test_invalid_values_are_422_with_the_field(
    service: ApiService, path: str, body: dict[str, Any], loc: list[str]
) -> None:
    service.create("1")
    response = service.client.post(f"/orders/1/{path}", json=body)
    errors = problem(response, 422, VALIDATION_ERROR_TYPE)["errors"]
    assert loc in [e["loc"] for e in errors]
    assert len(service.log.events) == 1


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"id": "has space"}, ["body", "id"]),
        ({"id": "x" * 257}, ["body", "id"]),
        ({"user_id": "u" * 257}, ["body", "user_id"]),
        ({"user_id": ""}, ["body", "user_id"]),
        ({"quantity": None}, ["body", "quantity"]),
    ],
)
def test_invalid_creates_are_422_with_the_field(
    service: ApiService, fields: dict[str, Any], loc: list[str]
) -> None:
    response = service.client.post("/orders", json={"id": "1", **ORDER, **fields})
    errors = problem(response, 422, VALIDATION_ERROR_TYPE)["errors"]
    assert loc in [e["loc"] for e in errors]


def test_an_invalid_order_id_in_the_path_is_422(service: ApiService) -> None:
    response = service.client.post("/orders/-bad/price", json={"price": 1})
    assert problem(response, 422)["errors"][0]["loc"] == ["path", "order_id"]


@pytest.mark.parametrize(
    "content",
    [
        b'{"price": ',
        b"[]",
        b"null",
        b"\xff\xfe",
        b'{"price": 1} trailing',
        b'{"price": "\xff"}',  # not UTF-8
        b'{"product_id": "caf\xe9"}',  # Latin-1
        b"[" * 10_000 + b"]" * 10_000,  # nested deeper than any parser recursion limit
        b'{"price": ' + b'{"a": ' * 5_000 + b"1" + b"}" * 5_001,  # under the body limit
    ],
)
def test_malformed_json_is_422_never_500(service: ApiService, content: bytes) -> None:
    service.create("1")
    response = service.client.post(
        "/orders/1/price", content=content, headers={"content-type": "application/json"}
    )
    problem(response, 422, VALIDATION_ERROR_TYPE)
    assert len(service.log.events) == 1


def _strict_json(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "content",
    [
        b'{"price": NaN}',
        b'{"price": Infinity}',
        b'{"price": -Infinity}',
        b'{"price": 1e400}',  # valid JSON, but no finite float
        b'{"price": 1, "expected_version": NaN}',
        b'{"price": [NaN, {"x": Infinity}]}',
    ],
)
def test_non_finite_numbers_are_422_in_strict_json(service: ApiService, content: bytes) -> None:
    service.create("1")
    response = service.client.post(
        "/orders/1/price", content=content, headers={"content-type": "application/json"}
    )
    problem(response, 422, VALIDATION_ERROR_TYPE)
    _strict_json(response.text)  # the answer itself is JSON a strict parser reads
    assert len(service.log.events) == 1


def test_a_number_too_long_to_parse_is_a_client_error_not_500(service: ApiService) -> None:
    service.create("1")
    response = service.client.post(
        "/orders/1/price",
        content=b'{"price": ' + b"9" * 5000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE


def test_commands_are_503_until_the_view_is_ready(service: ApiService) -> None:
    service.ready.off("partition 0: restoring")
    response = service.create("1")
    body = problem(response, 503, NOT_READY_TYPE)
    assert body["waiting_for"] == ["partition 0: restoring"]
    assert response.headers["retry-after"] == "1"
    problem(service.client.get("/health/ready"), 503, NOT_READY_TYPE)
    problem(service.client.get("/orders/1"), 503, NOT_READY_TYPE)
    assert service.client.get("/health/live").status_code == 200


def test_an_unacknowledged_write_is_503_and_its_order_in_doubt(service: ApiService) -> None:
    service.create("1")
    service.log.fail_next = True
    problem(service.client.post("/orders/1/price", json={"price": 13}), 503, NOT_ACKNOWLEDGED_TYPE)
    response = service.client.post("/orders/1/price", json={"price": 14})
    assert problem(response, 503, ORDER_IN_DOUBT_TYPE)["version_in_doubt"] == 2


def test_reads_show_the_acknowledged_state_with_its_etag(service: ApiService) -> None:
    service.create("1")
    response = service.client.get("/orders/1")
    assert response.status_code == 200
    assert response.headers["etag"] == '"1"'
    assert response.json()["price"] == 12
    problem(service.client.get("/orders/2"), 404, ORDER_NOT_FOUND_TYPE)


def test_unknown_routes_and_methods_are_problems(service: ApiService) -> None:
    problem(service.client.post("/orders/1/colour", json={}), 404)
    problem(service.client.delete("/orders/1"), 405)


def test_the_openapi_document_lists_every_command(service: ApiService) -> None:
    paths = service.client.get("/openapi.json").json()["paths"]
    for path in ("price", "quantity", "product", "cancel"):
        assert "post" in paths[f"/orders/{{order_id}}/{path}"]
    assert set(paths["/orders"]["post"]["responses"]) >= {"201", "409", "422", "503"}
