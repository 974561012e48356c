"""If-Match and expected_version, and the bearer token: parsing and their HTTP answers."""

from __future__ import annotations

import pytest

from es_orders.command.preconditions import (
    InvalidPreconditionError,
    expected_version,
    parse_if_match,
)
from es_orders.http.problems import UNAUTHORIZED, VALIDATION_ERROR, VERSION_CONFLICT
from tests.unit.command_support import ORDER, ApiService, problem

UNAUTHORIZED_TYPE = UNAUTHORIZED.type
VALIDATION_ERROR_TYPE = VALIDATION_ERROR.type
VERSION_CONFLICT_TYPE = VERSION_CONFLICT.type

TOKEN = "s3cret-token"


@pytest.fixture
def service() -> ApiService:
    return ApiService()


@pytest.mark.parametrize("header", ['"1"', 'W/"1"', "1", " 1 ", "*"])
def test_if_match_forms_that_name_the_current_version_succeed(
    service: ApiService, header: str
) -> None:
    service.create("1")
    response = service.client.post(
        "/orders/1/price", json={"price": 13}, headers={"If-Match": header}
    )
    assert response.status_code == 200, response.text


def test_a_stale_if_match_is_412_with_the_current_version(service: ApiService) -> None:
    service.create("1")
    service.client.post("/orders/1/price", json={"price": 13})
    response = service.client.post(
        "/orders/1/price", json={"price": 14}, headers={"If-Match": '"1"'}
    )
    body = problem(response, 412, VERSION_CONFLICT_TYPE)
    assert (body["current_version"], body["expected_version"]) == (2, 1)
    assert response.headers["etag"] == '"2"'
    assert len(service.log.events) == 2


def test_a_stale_expected_version_in_the_body_is_412(service: ApiService) -> None:
    service.create("1")
    response = service.client.post("/orders/1/cancel", json={"expected_version": 7})
    assert problem(response, 412, VERSION_CONFLICT_TYPE)["current_version"] == 1


@pytest.mark.parametrize("header", ['"1", "2"', '"abc"', "W/1", '"' + "9" * 30 + '"'])
def test_an_if_match_that_names_no_single_version_is_422(service: ApiService, header: str) -> None:
    service.create("1")
    response = service.client.post(
        "/orders/1/price", json={"price": 13}, headers={"If-Match": header}
    )
    body = problem(response, 422, VALIDATION_ERROR_TYPE)
    assert body["errors"][0]["loc"] == ["header", "If-Match"]


@pytest.mark.parametrize("second", ['"1"', '"2"', "*"])
def test_two_if_match_headers_are_422_like_a_list_on_one_line(
    service: ApiService, second: str
) -> None:
    service.create("1")
    response = service.client.post(
        "/orders/1/price",
        json={"price": 13},
        headers=[("If-Match", '"1"'), ("If-Match", second)],
    )
    body = problem(response, 422, VALIDATION_ERROR_TYPE)
    assert body["errors"][0]["loc"] == ["header", "If-Match"]
    assert len(service.log.events) == 1


def test_if_match_and_expected_version_must_agree(service: ApiService) -> None:
    service.create("1")
    response = service.client.post(
        "/orders/1/price", json={"price": 13, "expected_version": 1}, headers={"If-Match": '"2"'}
    )
    problem(response, 422, VALIDATION_ERROR_TYPE)


class TestBearerToken:
    @pytest.fixture
    def secured(self) -> ApiService:
        return ApiService(token=TOKEN)

    def test_a_write_without_the_token_is_401_with_a_challenge(self, secured: ApiService) -> None:
        response = secured.create("1")
        problem(response, 401, UNAUTHORIZED_TYPE)
        assert response.headers["www-authenticate"] == 'Bearer realm="es-orders"'
        assert secured.log.events == []

    @pytest.mark.parametrize("value", [f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "])
    def test_a_wrong_token_is_401(self, secured: ApiService, value: str) -> None:
        response = secured.client.post(
            "/orders", json={"id": "1", **ORDER}, headers={"Authorization": value}
        )
        problem(response, 401, UNAUTHORIZED_TYPE)
        assert 'error="invalid_token"' in response.headers["www-authenticate"]

    def test_auth_comes_before_body_validation(self, secured: ApiService) -> None:
        response = secured.client.post(
            "/orders", content=b"{", headers={"content-type": "application/json"}
        )
        problem(response, 401, UNAUTHORIZED_TYPE)

    def test_the_token_lets_writes_through_and_reads_need_none(self, secured: ApiService) -> None:
        headers = {"Authorization": f"bearer {TOKEN}"}
        response = secured.client.post("/orders", json={"id": "1", **ORDER}, headers=headers)
        assert response.status_code == 201
        assert secured.client.get("/orders/1").status_code == 200
        assert secured.client.get("/health/ready").status_code == 200

    def test_the_openapi_document_shows_the_scheme(self, secured: ApiService) -> None:
        document = secured.client.get("/openapi.json").json()
        assert "HTTPBearer" in document["components"]["securitySchemes"]


@pytest.mark.parametrize(
    ("header", "in_body", "expected"),
    [
        (None, None, None),
        ('"7"', None, 7),
        ('W/"7"', None, 7),
        ("7", None, 7),
        ("*", None, None),
        ("*", 3, 3),
        (None, 3, 3),
        ('"3"', 3, 3),
    ],
)
def test_expected_version_from_header_and_body(
    header: str | None, in_body: int | None, expected: int | None
) -> None:
    assert expected_version(header, in_body) == expected


@pytest.mark.parametrize("header", ["", '""', '"7", "8"', "seven", '"-1"', '"9223372036854775808"'])
def test_parse_if_match_refuses_what_names_no_single_version(header: str) -> None:
    with pytest.raises(InvalidPreconditionError):
        parse_if_match(header)
