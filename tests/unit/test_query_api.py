"""The query service's HTTP API against an in-memory view: paging, ETags, health, problems."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from es_orders.http import PROBLEM_MEDIA_TYPE, ProblemError
from es_orders.query import create_query_app
from es_orders.runtime.clients import Counters
from es_orders.runtime.views import PartitionNotHeldError, Readiness
from tests.unit.query_support import InMemoryView, fill, state_json

NEXT_LINK = re.compile(r'^<([^>]*)>; rel="next"$')


class BrokenView(InMemoryView):
    def get(self, order_id: str) -> bytes | None:
        raise RuntimeError("disk I/O error")


@pytest.fixture
def view() -> InMemoryView:
    return InMemoryView()


@pytest.fixture
def client(view: InMemoryView) -> Iterator[TestClient]:
    with TestClient(create_query_app(view)) as test_client:
        yield test_client


def walk(client: TestClient, first_url: str) -> tuple[list[str], list[int]]:
    """Follow Link headers from ``first_url`` to the end: (ids seen in order, page sizes)."""
    seen: list[str] = []
    sizes: list[int] = []
    url: str | None = first_url
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200, response.text
        orders = response.json()
        seen += [order["id"] for order in orders]
        sizes.append(len(orders))
        link = response.headers.get("link")
        if link is None:
            url = None
        else:
            match = NEXT_LINK.match(link)
            assert match, link
            url = match.group(1)
        assert len(sizes) <= 1000, "paging does not terminate"
    return seen, sizes


def assert_problem(response: Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body, dict)
    return body


def test_list_is_ordered_by_id_and_passes_stored_bytes_through(
    client: TestClient, view: InMemoryView
) -> None:
    fill(view, ["b", "c", "a", "10", "2"])

    response = client.get("/orders")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert [o["id"] for o in response.json()] == ["10", "2", "a", "b", "c"]
    expected = b"[" + b",".join(view.states[i] for i in ["10", "2", "a", "b", "c"]) + b"]"
    assert response.content == expected
    assert "link" not in response.headers


def test_empty_list_is_an_empty_array_without_link(client: TestClient) -> None:
    response = client.get("/orders")

    assert response.status_code == 200
    assert response.json() == []
    assert "link" not in response.headers


@pytest.mark.parametrize(
    ("count", "limit", "sizes"),
    [
        (250, 100, [100, 100, 50]),
        (200, 100, [100, 100]),
        (250, 1000, [250]),
        (1000, 1000, [1000]),
        (25, 1, [1] * 25),
    ],
)
def test_paging_follows_links_and_sees_every_order_once(
    client: TestClient, view: InMemoryView, count: int, limit: int, sizes: list[int]
) -> None:
    ids = [f"order-{n:04d}" for n in range(count)]
    fill(view, list(reversed(ids)))

    seen, page_sizes = walk(client, f"/orders?limit={limit}")

    assert seen == ids
    assert page_sizes == sizes


def test_default_page_is_one_hundred(client: TestClient, view: InMemoryView) -> None:
    fill(view, [f"{n:03d}" for n in range(101)])

    response = client.get("/orders")

    assert len(response.json()) == 100
    assert response.headers["link"] == '</orders?limit=100&after=099>; rel="next"'


def test_after_starts_past_the_given_id(client: TestClient, view: InMemoryView) -> None:
    fill(view, ["a", "b", "c", "d"])

    response = client.get("/orders", params={"after": "b"})

    assert [o["id"] for o in response.json()] == ["c", "d"]


def test_ids_with_special_characters_page_correctly(client: TestClient, view: InMemoryView) -> None:
    ids = sorted(["a b", "x:y", "a/b", "a&after=z", "p+q", "é", "a>b, c", "50%", "q?r#s"])
    fill(view, ids)

    seen, _ = walk(client, "/orders?limit=1")

    assert seen == ids


def test_link_is_url_encoded(client: TestClient, view: InMemoryView) -> None:
    fill(view, ["a b", "a>b", "z"])

    response = client.get("/orders", params={"limit": 2})

    assert response.headers["link"] == '</orders?limit=2&after=a%3Eb>; rel="next"'


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "many"])
def test_limit_out_of_range_is_a_422_problem(client: TestClient, limit: str) -> None:
    response = client.get("/orders", params={"limit": limit})

    body = assert_problem(response, 422)
    assert body["type"] == "https://es-orders.dev/problems/validation-error"
    errors = body["errors"]
    assert isinstance(errors, list) and errors
    assert errors[0]["loc"] == ["query", "limit"]
    assert "limit" in str(body["detail"])


def test_get_returns_the_stored_bytes_with_version_etag(
    client: TestClient, view: InMemoryView
) -> None:
    view.put("1", state_json("1", version=7))

    response = client.get("/orders/1")

    assert response.status_code == 200
    assert response.content == view.states["1"]
    assert response.headers["content-type"] == "application/json"
    assert response.headers["etag"] == '"7"'


@pytest.mark.parametrize("if_none_match", ['"7"', 'W/"7"', '"6", "7"', "*"])
def test_if_none_match_on_the_current_version_is_304(
    client: TestClient, view: InMemoryView, if_none_match: str
) -> None:
    view.put("1", state_json("1", version=7))

    response = client.get("/orders/1", headers={"If-None-Match": if_none_match})

    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == '"7"'


def test_if_none_match_on_an_older_version_returns_the_state(
    client: TestClient, view: InMemoryView
) -> None:
    view.put("1", state_json("1", version=8))

    response = client.get("/orders/1", headers={"If-None-Match": '"7"'})

    assert response.status_code == 200
    assert response.content == view.states["1"]
    assert response.headers["etag"] == '"8"'


def test_unknown_order_is_a_404_problem_naming_the_id(client: TestClient) -> None:
    response = client.get("/orders/nope-42")

    body = assert_problem(response, 404)
    assert body["type"] == "https://es-orders.dev/problems/order-not-found"
    assert "nope-42" in str(body["detail"])
    assert body["order_id"] == "nope-42"


@pytest.mark.parametrize("order_id", ["a/b", "a b", "x:y", "é"])
def test_ids_with_special_characters_can_be_fetched(
    client: TestClient, view: InMemoryView, order_id: str
) -> None:
    view.put(order_id, state_json(order_id))

    response = client.get("/orders/" + quote(order_id, safe=""))

    assert response.status_code == 200
    assert response.json()["id"] == order_id


def test_not_ready_is_a_503_problem_saying_what_it_waits_for(view: InMemoryView) -> None:
    view.state_of_readiness = Readiness(
        ready=False,
        waiting_for=("partition 1 restoring", "partition 2 catching up"),
        partitions={0: "caught-up", 1: "restoring", 2: "catching-up"},
    )
    with TestClient(create_query_app(view)) as client:
        response = client.get("/health/ready")

    body = assert_problem(response, 503)
    assert body["waiting_for"] == ["partition 1 restoring", "partition 2 catching up"]
    assert body["partitions"] == {"0": "caught-up", "1": "restoring", "2": "catching-up"}
    assert "partition 1 restoring" in str(body["detail"])


def test_ready_is_200_with_partitions(view: InMemoryView) -> None:
    view.state_of_readiness = Readiness(ready=True, partitions={0: "caught-up", 2: "caught-up"})
    with TestClient(create_query_app(view)) as client:
        response = client.get("/health/ready")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "partitions": {"0": "caught-up", "2": "caught-up"},
    }


def test_live_is_200(client: TestClient) -> None:
    response = client.get("/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "live"}


def test_openapi_documents_paths_models_and_problems(client: TestClient) -> None:
    document = client.get("/openapi.json").json()

    assert document["info"]["title"] == "es-orders query service"
    assert set(document["paths"]) >= {
        "/orders",
        "/orders/{order_id}",
        "/health/live",
        "/health/ready",
    }
    get_order = document["paths"]["/orders/{order_id}"]["get"]["responses"]
    ok_schema = get_order["200"]["content"]["application/json"]["schema"]
    assert ok_schema["$ref"].endswith("/OrderState")
    assert PROBLEM_MEDIA_TYPE in get_order["404"]["content"]
    list_422 = document["paths"]["/orders"]["get"]["responses"]["422"]
    assert set(list_422["content"]) == {PROBLEM_MEDIA_TYPE}
    state_fields = document["components"]["schemas"]["OrderState"]["properties"]
    assert set(state_fields) == {
        "id",
        "user_id",
        "product_id",
        "quantity",
        "price",
        "status",
        "version",
        "created_at",
        "updated_at",
    }
    assert client.get("/docs").status_code == 200


def test_unknown_route_is_a_404_problem(client: TestClient) -> None:
    body = assert_problem(client.get("/nowhere"), 404)

    assert body["type"] == "about:blank"
    assert body["title"] == "Not Found"
    assert "/nowhere" in str(body["detail"])


def test_wrong_method_is_a_405_problem_with_allow(client: TestClient) -> None:
    response = client.post("/orders", json={})

    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]


def test_an_exception_from_the_view_is_a_logged_500_problem(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # raise_server_exceptions stays on: a crash would surface here as RuntimeError.
    with (
        caplog.at_level(logging.ERROR, logger="es_orders.http.problems"),
        TestClient(create_query_app(BrokenView())) as client,
    ):
        response = client.get("/orders/1")

    body = assert_problem(response, 500)
    assert "disk I/O error" not in json.dumps(body)
    [record] = [r for r in caplog.records if r.name == "es_orders.http.problems"]
    assert record.exc_info is not None
    assert "path=/orders/1" in record.getMessage()


def test_problem_error_rejects_extensions_that_shadow_standard_members() -> None:
    with pytest.raises(ValueError, match="status"):
        ProblemError(409, "conflict", extra={"status": 200})


def test_problem_error_title_defaults_to_the_status_phrase() -> None:
    problem = ProblemError(412, "version is 3", extra={"current_version": 3})

    assert problem.body() == {
        "type": "about:blank",
        "title": "Precondition Failed",
        "status": 412,
        "detail": "version is 3",
        "current_version": 3,
    }


def test_stats_reports_counts_as_integers_and_instants_as_seconds(view: InMemoryView) -> None:
    view.counters = Counters(
        consumed=27,
        changed=9,
        duplicates=1,
        gaps=2,
        replayed=3,
        dead_letters=4,
        changelog_records=9,
        restored_records=5,
        batches=6,
        first_record_at=1_764_338_401.25,
        last_checkpoint_at=1_764_338_402.5,
    )
    response = TestClient(create_query_app(view)).get("/stats")
    assert response.status_code == 200
    assert '"consumed":27,' in response.text
    assert response.json() == {
        "consumed": 27,
        "changed": 9,
        "duplicates": 1,
        "gaps": 2,
        "replayed": 3,
        "dead_letters": 4,
        "changelog_records": 9,
        "restored_records": 5,
        "batches": 6,
        "first_record_at": 1_764_338_401.25,
        "last_checkpoint_at": 1_764_338_402.5,
        "workers": [],
        "partitions": {},
    }
    counts = {
        k: v
        for k, v in response.json().items()
        if not k.endswith("_at") and k not in ("workers", "partitions")
    }
    assert all(type(count) is int for count in counts.values()), counts


class _NothingHeld(InMemoryView):
    """A view whose instance holds no partition now (revoked, or lost with the group)."""

    def get(self, order_id: str) -> bytes | None:
        raise PartitionNotHeldError(2)

    def page(
        self, after: str | None, limit: int, partitions: Collection[int] | None = None
    ) -> list[tuple[str, bytes]]:
        raise PartitionNotHeldError(None)


def test_a_read_this_instance_cannot_answer_is_503_never_404() -> None:
    client = TestClient(create_query_app(_NothingHeld()))

    one = client.get("/orders/42")
    listing = client.get("/orders")

    for response in (one, listing):
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        assert response.json()["type"].endswith("/partition-unavailable")
    assert one.json()["partition"] == 2
    assert listing.json()["partition"] is None
