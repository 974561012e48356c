"""``es-orders query`` as a user runs it: HTTP over the folded state, crashes, restores."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from es_orders.workload import encoded, order_events
from tests.integration.runtime_support import expected_fold, produce, read_all
from tests.integration.test_materializer import all_vectors
from tests.vectors import VectorRecord, normalize_state

pytestmark = pytest.mark.integration


def by_id(orders: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["id"]: normalize_state(o) for o in orders}


def test_vectors_over_http_with_paging_etags_and_problems(
    kafka_config: dict[str, Any], topics: dict[str, str], start_query: Any
) -> None:
    records, expected, dlq = all_vectors()
    produce(kafka_config, topics["events"], records)
    query = start_query()
    query.wait_ready()

    assert by_id(query.all_orders()) == {oid: normalize_state(s) for oid, s in expected.items()}
    for limit in (1, 3, 1000):
        walked = [o["id"] for o in query.all_orders(limit=limit)]
        assert walked == sorted(expected), f"limit={limit}"

    order_id = "lifecycle.1"
    response = query.get(f"/orders/{order_id}")
    assert response.status_code == 200
    assert response.headers["etag"] == '"5"'
    assert response.json()["status"] == "cancelled"
    missing = query.get("/orders/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert "nope" in missing.json()["detail"]
    assert query.get("/orders", limit=0).status_code == 422

    dead = read_all(kafka_config, topics["dlq"])
    assert len(dead) == dlq
    assert all({"error", "source"} <= dict(m.headers()).keys() for m in dead)
    assert query.stop() == 0
    assert "partitions revoked" in query.log_text()


def mixed_workload(orders: int, events: int) -> list[VectorRecord]:
    """Typed events, poison records, and legacy partial updates whose re-application
    would show: each legacy order flips its price back and forth, so a record applied
    twice adds versions."""
    records = [
        VectorRecord(k, v, {}, 1_795_876_000_000) for k, v in encoded(order_events(orders, events))
    ]
    rng = random.Random(3)
    for n in range(events // 20):
        oid = f"legacy{n % 50}"
        price = 10 + n % 2
        value = json.dumps({"id": oid, "userId": "u", "price": price, "amount": 1 + n % 3})
        records.insert(
            rng.randrange(len(records)),
            VectorRecord(oid.encode(), value.encode(), {}, 1_795_876_000_000 + n),
        )
    for n in range(25):
        records.insert(
            rng.randrange(len(records)), VectorRecord(b"o0000001", b"not json %d" % n, {}, 0)
        )
    return records


def consumed_positions(state_dir: Path) -> dict[str, int]:
    """Each local store's checkpointed position (0 before its first checkpoint)."""
    positions = {}
    for path in state_dir.rglob("*.sqlite"):
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
                row = db.execute("SELECT value FROM meta WHERE key = 'consumed'").fetchone()
        except sqlite3.OperationalError:  # created but not yet initialized
            row = None
        positions[path.name] = row[0] if row else 0
    return positions


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_at_any_moment_loses_nothing_and_applies_nothing_twice(
    kafka_config: dict[str, Any],
    topics: dict[str, str],
    start_query: Any,
    tmp_path: Path,
    workers: int,
) -> None:
    records = mixed_workload(orders=2_000, events=60_000)
    produce(kafka_config, topics["events"], records)
    expected = expected_fold(records)
    state_dir = tmp_path / "state"
    rng = random.Random(11)
    interrupted_midway = 0

    # Killed while folding, at random points of its progress: the fold is fast, so the
    # moment is chosen by watching the checkpointed positions, not by a timer.
    for _ in range(4):
        query = start_query("--workers", str(workers))
        query.wait_for_log("partition ready to fold")
        done = sum(consumed_positions(state_dir).values())
        target = done + rng.uniform(0.05, 0.5) * (len(records) - done)
        while sum(consumed_positions(state_dir).values()) < target:
            time.sleep(0.005)
        query.kill9()
        interrupted_midway += sum(consumed_positions(state_dir).values()) < len(records)

    # Killed during restore: without local files the whole changelog is read. The restore
    # is quick, so a kill can come too late: try until one lands inside it.
    for _ in range(5):
        shutil.rmtree(state_dir)
        query = start_query("--workers", str(workers))
        query.wait_for_log("partitions assigned")
        query.kill9()
        if "partition restored" not in query.log_text():
            break
    else:
        pytest.fail("no kill landed during the restore")

    query = start_query("--workers", str(workers))
    query.wait_ready(timeout=120)
    assert by_id(query.all_orders()) == expected
    assert interrupted_midway >= 1, "no kill landed while the service was folding"
    assert query.stop() == 0


def test_ready_only_after_assignment_restore_and_catch_up(
    kafka_config: dict[str, Any], topics: dict[str, str], start_query: Any
) -> None:
    produce(kafka_config, topics["events"], mixed_workload(orders=500, events=20_000))
    query = start_query()
    seen: list[int] = []
    waiting: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            response = query.get("/health/ready")
        except Exception:  # not listening yet
            time.sleep(0.02)
            continue
        seen.append(response.status_code)
        if response.status_code == 200:
            break
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        waiting += response.json()["waiting_for"]
        time.sleep(0.02)
    assert seen[0] == 503 and seen[-1] == 200
    assert "group join and partition assignment" in waiting
    # Ready means caught up: every order is there on the first read.
    assert len(query.all_orders()) == 500 + 50
    assert query.get("/health/live").status_code == 200
