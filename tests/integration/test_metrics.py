"""GET /metrics of a real query service and command service: the fold's counters move
with the commands sent, and every partition's lag is there."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from es_orders.kafka.partitioner import partition_for
from tests.integration.service_support import Service
from tests.metrics_text import Samples, samples_of

pytestmark = pytest.mark.integration

PARTITIONS = 3
ORDER = {"user_id": "u1", "product_id": "57", "quantity": 2, "price": 1299}


def scrape(service: Service) -> Samples:
    response = service.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples_of(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(service: Service, seen: Callable[[Samples], bool], timeout: float = 30) -> Samples:
    """The service's samples once ``seen`` says they are what the test waits for."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(service)
        if seen(samples):
            return samples
        assert time.monotonic() < deadline, f"not seen within {timeout} s: {samples}"
        time.sleep(0.1)


def one_order_a_partition() -> list[str]:
    ids: dict[int, str] = {}
    while len(ids) < PARTITIONS:
        order_id = f"m-{uuid.uuid4().hex[:12]}"
        ids.setdefault(partition_for(order_id.encode(), PARTITIONS), order_id)
    return list(ids.values())


def test_the_fold_counters_move_with_the_commands(start_query: Any, start_command: Any) -> None:
    query, command = start_query(), start_command("--no-simulate")
    query.wait_ready()
    command.wait_ready()
    folded, written = "es_orders_events_folded_total", "es_orders_changelog_records_total"
    query_before, command_before = scrape(query), scrape(command)

    order_ids = one_order_a_partition()
    for order_id in order_ids:
        created = httpx.post(f"{command.url}/orders", json={"id": order_id, **ORDER}, timeout=30)
        assert created.status_code == 201, created.text
        changed = httpx.post(
            f"{command.url}/orders/{order_id}/price", json={"price": 5}, timeout=30
        )
        assert changed.status_code == 200, changed.text
    events = 2 * len(order_ids)

    def folded_all(before: Samples) -> Callable[[Samples], bool]:
        return lambda now: value(now, folded) - value(before, folded) >= events

    query_after = wait_for(query, folded_all(query_before))
    assert value(query_after, folded) - value(query_before, folded) == events
    assert value(query_after, written) > value(query_before, written)
    for partition in range(PARTITIONS):
        assert ("es_orders_partition_lag_records", frozenset({("partition", str(partition))})) in (
            query_after
        )
        caught_up = {"partition": str(partition), "phase": "caught-up"}
        assert value(query_after, "es_orders_partition_phase", **caught_up) == 1
    assert value(query_after, "es_orders_checkpoint_duration_seconds_count") > value(
        query_before, "es_orders_checkpoint_duration_seconds_count"
    )

    # The command service folds the same events into a view of its own.
    command_after = wait_for(command, folded_all(command_before))
    commands = "es_orders_commands_total"
    for kind, status in (("create_order", "201"), ("change_price", "200")):
        labels = {"kind": kind, "status": status, "outcome": "applied"}
        assert value(command_after, commands, **labels) == len(order_ids)

    # A read through the query service, timed under its route's template.
    assert query.get(f"/orders/{order_ids[0]}").status_code == 200
    route = {"method": "GET", "route": "/orders/{order_id:path}", "status": "200"}
    count = "es_orders_http_request_duration_seconds_count"
    assert value(scrape(query), count, **route) == value(query_after, count, **route) + 1
