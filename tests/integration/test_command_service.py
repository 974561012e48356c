"""The command service as a process against a real broker, with a query service beside it.

One command service (bearer token on, simulator off) and one query service serve the
whole module; each test works on order ids of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from threading import Barrier
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from es_orders.brokers import Broker
from es_orders.domain import OrderCreated, PriceChanged
from es_orders.kafka.partitioner import partition_for
from tests.integration.runtime_support import read_all
from tests.integration.service_support import Service, events_of, service_env

pytestmark = pytest.mark.integration

TOKEN = "integration-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ORDER = {"user_id": "u1", "product_id": "57", "quantity": 2, "price": 1299}


@dataclass
class System:
    command: Service
    query: Service
    kafka_config: dict[str, Any]
    events_topic: str

    def post(self, path: str, body: Any = None, **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.command.url}{path}", json=body, headers={**AUTH, **headers}, timeout=30
        )

    def create(self, order_id: str) -> httpx.Response:
        return self.post("/orders", {"id": order_id, **ORDER})


@pytest.fixture(scope="module")
def system(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    prefix = f"cmd-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("command-service")
    env = service_env(broker.bootstrap_servers, prefix, work / "state", ES_ORDERS_API_TOKEN=TOKEN)
    command = Service("command", env, work, "--no-simulate")
    query = Service("query", env, work)
    try:
        command.wait_ready()
        query.wait_ready()
        yield System(
            command, query, {"bootstrap.servers": broker.bootstrap_servers}, f"{prefix}-events"
        )
    finally:
        codes = {"command": command.stop(), "query": query.stop()}
    assert codes == {"command": 0, "query": 0}, command.log_tail() + query.log_tail()


@pytest.fixture
def order_id() -> str:
    return f"o-{uuid.uuid4().hex[:12]}"


def problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"].endswith(f"/problems/{slug}")
    assert body["status"] == status
    return body


def eventually(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_create_and_change_answer_with_versions(system: System, order_id: str) -> None:
    created = system.create(order_id)
    assert created.status_code == 201
    body = created.json()
    partition = partition_for(order_id.encode(), 3)
    assert (body["id"], body["version"], body["partition"]) == (order_id, 1, partition)
    assert created.headers["location"] == f"/orders/{order_id}"

    changed = system.post(f"/orders/{order_id}/price", {"price": 1199}, **{"If-Match": '"1"'})
    assert changed.json()["version"] == 2
    assert changed.json()["partition"] == partition
    assert changed.json()["offset"] > body["offset"]
    for path, body in [("quantity", {"quantity": 3}), ("product", {"product_id": "58"})]:
        assert system.post(f"/orders/{order_id}/{path}", body).status_code == 200
    mine = httpx.get(f"{system.command.url}/orders/{order_id}")
    assert mine.headers["etag"] == '"4"'


def test_refusals_are_problems(system: System, order_id: str) -> None:
    system.create(order_id)
    problem(system.create(order_id), 409, "order-exists")
    problem(system.post("/orders/no-such-order/price", {"price": 1}), 404, "order-not-found")
    problem(system.post(f"/orders/{order_id}/price", {"price": -5}), 422, "validation-error")
    problem(system.post(f"/orders/{order_id}/price", {"price": "5"}), 422, "validation-error")
    malformed = httpx.post(
        f"{system.command.url}/orders/{order_id}/price",
        content=b'{"price": 5',
        headers={**AUTH, "content-type": "application/json"},
    )
    problem(malformed, 422, "validation-error")
    problem(system.post(f"/orders/{order_id}/product", {"product_id": ""}), 422, "validation-error")


def test_optimistic_concurrency_via_if_match_and_expected_version(
    system: System, order_id: str
) -> None:
    system.create(order_id)
    system.post(f"/orders/{order_id}/price", {"price": 1}, **{"If-Match": '"1"'})
    stale = system.post(f"/orders/{order_id}/price", {"price": 2}, **{"If-Match": '"1"'})
    assert problem(stale, 412, "version-conflict")["current_version"] == 2
    stale = system.post(f"/orders/{order_id}/quantity", {"quantity": 9, "expected_version": 1})
    assert problem(stale, 412, "version-conflict")["current_version"] == 2
    fresh = system.post(f"/orders/{order_id}/quantity", {"quantity": 9, "expected_version": 2})
    assert fresh.json()["version"] == 3


def test_no_ops_and_cancellation(system: System, order_id: str) -> None:
    system.create(order_id)
    assert system.post(f"/orders/{order_id}/price", {"price": 1299}).json()["version"] == 1
    assert system.post(f"/orders/{order_id}/cancel", {"reason": "test"}).json()["version"] == 2
    assert system.post(f"/orders/{order_id}/cancel").json()["version"] == 2
    problem(system.post(f"/orders/{order_id}/quantity", {"quantity": 4}), 409, "order-cancelled")
    events = events_of(system.kafka_config, system.events_topic)[order_id]
    assert [type(e).__name__ for e in events] == ["OrderCreated", "OrderCancelled"]


def test_writes_need_the_bearer_token(system: System, order_id: str) -> None:
    url = f"{system.command.url}/orders"
    response = httpx.post(url, json={"id": order_id, **ORDER})
    problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(url, json={"id": order_id, **ORDER}, headers={"Authorization": "Bearer x"})
    problem(wrong, 401, "unauthorized")
    assert httpx.get(f"{system.command.url}/health/ready").status_code == 200


def test_a_change_becomes_visible_in_the_query_service(system: System, order_id: str) -> None:
    system.create(order_id)
    system.post(f"/orders/{order_id}/quantity", {"quantity": 7})

    def shows_version_2() -> bool:
        response = httpx.get(f"{system.query.url}/orders/{order_id}")
        return response.status_code == 200 and response.headers["etag"] == '"2"'

    eventually(shows_version_2)
    state = httpx.get(f"{system.query.url}/orders/{order_id}").json()
    assert (state["quantity"], state["price"], state["status"]) == (7, 1299, "open")


def race(count: int, send: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    start = Barrier(count)

    def one(i: int) -> httpx.Response:
        start.wait()
        return send(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_racing_clients_with_the_same_if_match_get_one_success(
    system: System, order_id: str
) -> None:
    system.create(order_id)
    responses = race(
        20,
        lambda i: system.post(
            f"/orders/{order_id}/price", {"price": 100 + i}, **{"If-Match": '"1"'}
        ),
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [412] * 19
    assert {r.json()["current_version"] for r in responses if r.status_code == 412} == {2}


def test_racing_unconditional_changes_all_land_with_contiguous_versions(
    system: System, order_id: str
) -> None:
    system.create(order_id)
    responses = race(20, lambda i: system.post(f"/orders/{order_id}/price", {"price": 100 + i}))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert sorted(r.json()["version"] for r in responses) == list(range(2, 22))

    events = events_of(system.kafka_config, system.events_topic)[order_id]
    assert [e.version for e in events] == list(range(1, 22))
    assert isinstance(events[0], OrderCreated)
    prices = {e.price for e in events[1:] if isinstance(e, PriceChanged)}
    assert prices == set(range(100, 120))  # no update lost


def test_a_poison_record_is_dead_lettered_once(system: System, order_id: str) -> None:
    key = f"poison-{order_id}".encode()
    producer = Producer(system.kafka_config)
    producer.produce(system.events_topic, key=key, value=b"not json")
    assert producer.flush(10) == 0
    prefix = system.events_topic.removesuffix("-events")

    def dead_letters(topic: str) -> int:
        return sum(1 for m in read_all(system.kafka_config, topic) if m.key() == key)

    eventually(lambda: dead_letters(f"{prefix}-dlq") >= 1)
    # The command view reads the same record: it logs it and leaves the dead letter to
    # the query service.
    eventually(lambda: "skipped a record that cannot be folded" in system.command.log_tail(10**6))
    assert dead_letters(f"{prefix}-dlq") == 1
    assert system.create(order_id).status_code == 201  # and commands carry on


def test_history_and_time_travel_over_http(system: System, order_id: str) -> None:
    created = system.create(order_id).json()
    time.sleep(0.01)  # the changes are recorded at later instants than the creation
    for price in (1500, 1600):
        assert system.post(f"/orders/{order_id}/price", {"price": price}).status_code == 200
    eventually(lambda: system.query.get(f"/orders/{order_id}", min_version=3).status_code == 200)

    events = system.query.get(f"/orders/{order_id}/events")
    assert events.status_code == 200
    body = events.json()
    assert [e["version"] for e in body] == [1, 2, 3]
    assert [e["event"]["type"] for e in body] == ["OrderCreated", "PriceChanged", "PriceChanged"]
    assert body[0]["offset"] == created["offset"]
    assert body[0]["partition"] == partition_for(order_id.encode(), 3)
    assert [e["event"]["data"].get("price") for e in body] == [1299, 1500, 1600]

    first = system.query.get(f"/orders/{order_id}/events", limit=2)
    assert [e["version"] for e in first.json()] == [1, 2]
    assert "after_version=2" in first.headers["link"]
    rest = system.query.get(f"/orders/{order_id}/events", limit=2, after_version=2)
    assert [e["version"] for e in rest.json()] == [3] and "link" not in rest.headers

    at_2 = system.query.get(f"/orders/{order_id}", version=2)
    assert (at_2.json()["version"], at_2.json()["price"], at_2.headers["etag"]) == (2, 1500, '"2"')
    # Between the creation and the first change: the state as created.
    recorded = [datetime.fromisoformat(e["timestamp"]) for e in body]
    assert recorded[1] > recorded[0]
    between = recorded[0] + (recorded[1] - recorded[0]) / 2
    as_of = system.query.get(f"/orders/{order_id}", as_of=between.isoformat())
    assert (as_of.json()["version"], as_of.json()["price"]) == (1, 1299)
    assert (
        system.query.get(f"/orders/{order_id}", as_of="2999-01-01T00:00:00Z").json()["version"] == 3
    )
    before = recorded[0] - timedelta(seconds=1)
    problem(
        system.query.get(f"/orders/{order_id}", as_of=before.isoformat()), 404, "order-not-found"
    )
    problem(
        system.query.get(f"/orders/{order_id}", version=1, as_of=between.isoformat()),
        422,
        "validation-error",
    )
    problem(system.query.get(f"/orders/{order_id}", as_of="yesterday"), 422, "validation-error")
    problem(
        system.query.get(f"/orders/{order_id}", as_of="2026-01-01T00:00:00"),
        422,
        "validation-error",
    )
    problem(system.query.get("/orders/no-such-order/events"), 404, "order-not-found")
    problem(system.query.get("/orders/no-such-order", version=1), 404, "order-not-found")
