"""GET /metrics on both services: Prometheus text whose counters move with the work.

The apps run over the in-memory stand-ins of the other API tests; the fold's figures come
from a real ``StatusBoard`` fed the statuses a worker would send. One test forwards
commands to a stand-in holder served on the loopback interface.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from es_orders.command import create_command_app
from es_orders.query import create_query_app
from es_orders.query.members import Directory, MemberPartition, MemberRecord, encode_member
from es_orders.query.routing import Cluster
from es_orders.runtime.clients import Counters
from es_orders.runtime.metrics import FoldCollector
from es_orders.runtime.status import PartitionStatus, StatusBoard, WorkerStatus
from tests.metrics_text import Samples, samples_of
from tests.unit.command_support import (
    ORDER,
    PARTITIONS,
    ApiService,
    LaggingView,
    RecordingLog,
    make_handler,
)
from tests.unit.query_support import InMemoryView, fill

DURATION_COUNT = "es_orders_http_request_duration_seconds_count"
COMMANDS = "es_orders_commands_total"
FORWARDED = "es_orders_forwarded_requests_total"


def scrape(client: TestClient) -> Samples:
    """Every sample of GET /metrics, by name and labels; fails unless it parses."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples_of(response.text)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def families(client: TestClient) -> dict[str, str]:
    """Metric family name -> type."""
    text = client.get("/metrics").text
    return {family.name: family.type for family in text_string_to_metric_families(text)}


@pytest.fixture
def view() -> InMemoryView:
    view = InMemoryView()
    fill(view, ["1", "a/b"])
    return view


@pytest.fixture
def query(view: InMemoryView) -> Iterator[TestClient]:
    with TestClient(create_query_app(view)) as client:
        yield client


def test_both_services_serve_prometheus_text_documented_in_openapi(query: TestClient) -> None:
    command = ApiService()
    for client in (query, command.client):
        found = families(client)
        assert found["es_orders_http_request_duration_seconds"] == "histogram"
        assert found["process_resident_memory_bytes"] == "gauge"
        operation = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
        assert set(operation["responses"]["200"]["content"]) == {"text/plain"}
    assert families(query)["es_orders_forwarded_requests"] == "counter"
    assert families(command.client)["es_orders_commands"] == "counter"


def test_a_read_is_counted_under_its_route_template_and_status(query: TestClient) -> None:
    route = "/orders/{order_id:path}"
    before = scrape(query)
    assert query.get("/orders/a%2Fb").status_code == 200
    assert query.get("/orders/1").status_code == 200
    assert query.get("/orders/nope").status_code == 404
    after = scrape(query)

    def moved(status: str) -> float:
        labels = {"method": "GET", "route": route, "status": status}
        return (value(after, DURATION_COUNT, **labels) or 0) - (
            value(before, DURATION_COUNT, **labels) or 0
        )

    assert moved("200") == 2
    assert moved("404") == 1
    routes = {dict(labels).get("route") for name, labels in after if name == DURATION_COUNT}
    assert "/orders/nope" not in routes and "/orders/1" not in routes


def test_a_request_no_route_takes_is_counted_as_unmatched(query: TestClient) -> None:
    assert query.get("/no/such/thing").status_code == 404
    samples = scrape(query)
    assert value(samples, DURATION_COUNT, method="GET", route="unmatched", status="404") == 1


def test_a_401_is_counted_under_the_route_it_was_meant_for() -> None:
    service = ApiService(token="secret")
    refused = service.client.post("/orders/1/price", json={"price": 3})
    assert refused.status_code == 401
    samples = scrape(service.client)
    labels = {"method": "POST", "route": "/orders/{order_id}/price", "status": "401"}
    assert value(samples, DURATION_COUNT, **labels) == 1
    assert not [name for name, _ in samples if name == COMMANDS]  # it never became a command


def test_each_command_is_counted_by_kind_status_and_outcome() -> None:
    service = ApiService()
    client = service.client
    assert service.create("1").status_code == 201
    assert service.create("1").status_code == 409
    keyed = {"Idempotency-Key": "k-1"}
    assert client.post("/orders", json={"id": "2", **ORDER}, headers=keyed).status_code == 201
    assert client.post("/orders", json={"id": "2", **ORDER}, headers=keyed).status_code == 201
    assert client.post("/orders/1/price", json={"price": 99}).status_code == 200
    assert client.post("/orders/1/price", json={"price": 99}).status_code == 200
    stale = client.post("/orders/1/quantity", json={"quantity": 5}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    assert client.post("/orders/9/cancel").status_code == 404
    assert client.post("/orders", json={"id": "3"}).status_code == 422  # no command at all

    samples = scrape(client)
    counted = {
        (labels["kind"], labels["status"], labels["outcome"]): count
        for name, frozen in samples
        if name == COMMANDS
        for labels, count in [(dict(frozen), samples[(name, frozen)])]
    }
    assert counted == {
        ("create_order", "201", "applied"): 2,
        ("create_order", "409", "order-exists"): 1,
        ("create_order", "201", "replayed"): 1,
        ("change_price", "200", "applied"): 1,
        ("change_price", "200", "unchanged"): 1,
        ("change_quantity", "412", "version-conflict"): 1,
        ("cancel_order", "404", "order-not-found"): 1,
    }


def _worker(counters: Counters, *partitions: PartitionStatus, pid: int = 100) -> WorkerStatus:
    return WorkerStatus(index=0, pid=pid, joined=True, partitions=partitions, counters=counters)


def test_the_fold_figures_follow_the_workers_statuses(tmp_path: Path, view: InMemoryView) -> None:
    board = StatusBoard(tmp_path, "group", "events", 1)
    board.started(0, 100)
    folding = PartitionStatus(
        0,
        "caught-up",
        1,
        0.0,
        restored_records=7,
        restore_seconds=0.5,
        consumed=90,
        end=100,
        history="rebuilding",
        history_rebuilt=25,
        history_target=80,
    )
    restoring = PartitionStatus(1, "restoring", 1, 0.0, restored_records=3)
    counters = Counters(
        consumed=100,
        duplicates=1,
        gaps=2,
        replayed=3,
        dead_letters=4,
        changelog_records=40,
        restored_records=10,
        batches=4,
        checkpoint_seconds=0.25,
    )
    board.update(_worker(counters, folding, restoring))
    app = create_query_app(view, collectors=[FoldCollector(lambda: board.snapshot)])
    with TestClient(app) as client:
        first = scrape(client)
        expected = {
            "es_orders_events_folded_total": 100,
            "es_orders_duplicate_events_total": 1,
            "es_orders_version_gaps_total": 2,
            "es_orders_events_replayed_total": 3,
            "es_orders_dead_letters_total": 4,
            "es_orders_changelog_records_total": 40,
            "es_orders_restored_records_total": 10,
            "es_orders_checkpoint_duration_seconds_count": 4,
            "es_orders_checkpoint_duration_seconds_sum": 0.25,
        }
        assert {name: value(first, name) for name in expected} == expected
        lag = "es_orders_partition_lag_records"
        assert value(first, lag, partition="0") == 10
        assert value(first, lag, partition="1") is None  # not fetched yet
        phase = "es_orders_partition_phase"
        assert value(first, phase, partition="1", phase="restoring") == 1
        assert value(first, phase, partition="1", phase="caught-up") == 0
        assert value(first, "es_orders_partition_restored_records", partition="1") == 3
        restore_seconds = "es_orders_partition_restore_duration_seconds"
        assert value(first, restore_seconds, partition="0") == 0.5
        assert value(first, restore_seconds, partition="1") is None
        rebuild = "es_orders_partition_history_rebuild_records"
        assert value(first, rebuild, partition="0") == 55
        assert value(first, rebuild, partition="1") is None  # keeps no history

        # The worker folds on, then its process dies and a new one starts from zero: the
        # totals carry on from where they were, never back.
        rebuilt = msgspec.structs.replace(folding, history="complete", history_rebuilt=80)
        board.update(_worker(Counters(consumed=150, batches=6), rebuilt))
        again = scrape(client)
        assert value(again, "es_orders_events_folded_total") == 150
        assert value(again, rebuild, partition="0") == 0
        board.exited(0)
        board.started(0, 101)
        board.update(_worker(Counters(consumed=5), folding, pid=101))
        last = scrape(client)
        assert value(last, "es_orders_events_folded_total") == 155
        assert value(last, "es_orders_checkpoint_duration_seconds_count") == 6
        assert value(last, phase, partition="1", phase="restoring") is None  # not held now


class _Holder(BaseHTTPRequestHandler):
    """The instance holding every partition: creates whatever it is sent."""

    def do_POST(self) -> None:
        sent = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({"id": sent["id"], "version": 1, "partition": 0, "offset": 0})
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the test reads the answers


def test_forwarded_commands_are_counted_by_outcome_and_decided_only_by_the_holder() -> None:
    holder = ThreadingHTTPServer(("127.0.0.1", 0), _Holder)
    serving = threading.Thread(target=holder.serve_forever, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{holder.server_address[1]}"
    directory = Directory()
    claims = tuple(MemberPartition(n, "caught-up") for n in range(PARTITIONS))
    record = MemberRecord("holder", url, time.time(), time.time(), True, claims)
    directory.apply(b"holder", encode_member(record), 0)
    cluster = Cluster("me", "http://127.0.0.1:9", PARTITIONS, directory)
    handler = make_handler(LaggingView(), RecordingLog(), held=lambda _partition: False)
    with TestClient(create_command_app(handler, cluster=cluster)) as client:
        try:
            assert client.post("/orders", json={"id": "1", **ORDER}).status_code == 201
            assert client.post("/orders", json={"id": "2", **ORDER}).status_code == 201
        finally:
            holder.shutdown()
            holder.server_close()
        # The holder is gone: nothing listens on its port any more.
        assert client.post("/orders", json={"id": "3", **ORDER}).status_code == 503
        samples = scrape(client)
    assert value(samples, FORWARDED, method="POST", outcome="201") == 2
    assert value(samples, FORWARDED, method="POST", outcome="no_connection") == 1
    assert not [name for name, _ in samples if name == COMMANDS]
