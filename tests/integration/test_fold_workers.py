"""``es-orders query --workers N``: reads served by one process while worker processes fold.

What a user relies on: a read never shows part of a batch, a partition moving between
two workers is a 503 with Retry-After while it moves (never a 404 for an order that
exists), and a worker's memory stays within its cache whatever the number of orders.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from es_orders.domain import Event, OrderCreated, PriceChanged
from es_orders.kafka.partitioner import partition_for
from es_orders.workload import EPOCH, encoded, order_events
from tests.integration.service_support import Service

pytestmark = pytest.mark.integration


def produce_to(
    kafka_config: dict[str, Any], topic: str, records: list[tuple[bytes, bytes]]
) -> None:
    """Each record to the partition the Java client's partitioner gives its key."""
    producer = Producer({**kafka_config, "enable.idempotence": True, "linger.ms": 20})
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, partition=partition_for(key, 3))
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def _created(order_id: str) -> Event:
    return OrderCreated(str(uuid.uuid4()), order_id, 1, EPOCH, "u1", "p1", 1, 100)


def test_a_read_never_sees_part_of_a_batch(
    kafka_config: dict[str, Any], topics: dict[str, str], start_query: Any
) -> None:
    # Two orders of one partition, changed in turns: A2 B2 A3 B3 ... Every prefix of the
    # log has A's version equal to B's or one above it. A batch spans many turns, so a
    # checkpoint that wrote one order's row before the other's, or a reader that saw
    # part of it, would show A far ahead of B (or B ahead of A).
    first = "pair-a"
    second = next(
        f"pair-b{n}"
        for n in range(1000)
        if partition_for(f"pair-b{n}".encode(), 3) == partition_for(first.encode(), 3)
    )
    turns = 15_000
    events: list[Event] = [_created(first), _created(second)]
    for version in range(2, turns + 1):
        for order_id in (first, second):
            events.append(PriceChanged(str(uuid.uuid4()), order_id, version, EPOCH, version))
    produce_to(kafka_config, topics["events"], list(encoded(iter(events))))

    # Many small batches, so that reads land between checkpoints.
    query = start_query("--workers", "2", ES_ORDERS_MAX_BATCH="1000")
    seen: Counter[int] = Counter()
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=query.url, timeout=10) as client:
        while time.monotonic() < deadline:
            try:
                # scope=local: what this instance's readable partitions hold now; the
                # cluster-wide listing answers 503 while any partition is moving, as the
                # second worker's join makes them do for much of this fold.
                response = client.get("/orders", params={"limit": 1000, "scope": "local"})
            except httpx.TransportError:
                time.sleep(0.05)  # not listening yet
                continue
            if response.status_code != 200:
                assert response.status_code == 503, response.text
                continue
            versions = {o["id"]: o["version"] for o in response.json()}
            if first not in versions:
                assert second not in versions, versions
                continue
            ahead = versions[first] - versions[second]
            assert ahead in (0, 1), f"a read saw part of a batch: {versions}"
            seen[versions[first]] += 1
            if versions[second] == turns:
                break
    assert max(seen) == turns, "the fold did not finish in time"
    # The reads landed while the fold was going on, not only after it.
    assert len(seen) > 2, f"every read came after the fold: {seen}"


def _read_until(
    query: Service, ids: list[str], stop: threading.Event, statuses: Counter[Any]
) -> None:
    with httpx.Client(base_url=query.url, timeout=10) as client:
        n = 0
        while not stop.is_set():
            order_id = ids[n % len(ids)]
            n += 1
            response = client.get(f"/orders/{order_id}")
            if response.status_code == 503:
                assert response.headers.get("retry-after"), response.headers
                statuses[(503, response.json()["type"].rsplit("/", 1)[-1])] += 1
            else:
                statuses[response.status_code] += 1
            time.sleep(0.002)


def test_a_partition_moving_between_workers_is_served_or_503_never_404(
    kafka_config: dict[str, Any], topics: dict[str, str], start_query: Any
) -> None:
    orders = 3_000
    produce_to(kafka_config, topics["events"], list(encoded(order_events(orders, 20_000, 5))))
    query = start_query("--workers", "2")
    query.wait_ready(timeout=120)
    stats = query.get("/stats").json()
    holding = [w for w in stats["workers"] if w["partitions"]]
    assert len(holding) == 2, stats["workers"]  # three partitions over two workers
    victim = holding[0]

    ids = [f"o{n:07d}" for n in range(orders)]
    statuses: Counter[Any] = Counter()
    stop = threading.Event()
    reader = threading.Thread(target=_read_until, args=(query, ids, stop, statuses))
    reader.start()
    try:
        time.sleep(0.5)
        os.kill(victim["pid"], signal.SIGKILL)
        # Its partitions go to the other worker when its session expires, and part of them
        # come back when its replacement joins the group.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            workers = query.get("/stats").json()["workers"]
            replaced = workers[victim["index"]]
            moved = replaced["restarts"] == 1 and replaced["alive"] and replaced["partitions"]
            if moved and query.get("/health/ready").status_code == 200:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the worker was not replaced: {query.get('/stats').json()['workers']}")
        time.sleep(0.5)
    finally:
        stop.set()
        reader.join(30)
    assert set(statuses) <= {200, (503, "partition-unavailable")}, statuses
    assert statuses[200] > 0
    assert statuses[(503, "partition-unavailable")] > 0, (
        f"no read came while a partition moved: {statuses}"
    )
    assert "fold worker exited unexpectedly" in query.log_text()
    assert query.stop() == 0


def test_a_worker_folding_far_more_orders_than_its_cache_holds_stays_within_it(
    kafka_config: dict[str, Any], topics: dict[str, str], start_query: Any
) -> None:
    # 300,000 orders: about 110 MB of states if every one stayed in memory.
    orders = 300_000
    produce_to(kafka_config, topics["events"], list(encoded(order_events(orders, orders, 3))))
    query = start_query("--workers", "1", "--cache-mb", "8")
    query.wait_ready(timeout=180)
    stats = query.get("/stats").json()
    assert stats["consumed"] == orders
    (worker,) = stats["workers"]
    assert worker["cache_limit_bytes"] == 8 * 2**20
    assert worker["cache_bytes"] <= 8 * 2**20
    assert worker["peak_rss_bytes"] < _WORKER_RSS_CAP, worker
    assert query.stop() == 0


# The 8 MiB cache plus a fold worker's fixed overhead (the interpreter and its modules,
# librdkafka's fetch buffers, the states a batch changed until its checkpoint: 20,000 at
# most). Measured on this workload: 134 MiB peak with the 8 MiB cache, 224 MiB with a
# cache that holds every order.
_WORKER_RSS_CAP = 170 * 2**20


def test_partitions_under_steady_writes_are_caught_up_and_ready(
    start_command: Any, start_query: Any, tmp_path: Path
) -> None:
    # The simulator's steady writes (50 commands/s): librdkafka signals a partition's end
    # only when a fetch comes back without news of it, which for an instance holding one
    # partition under such writes never happens. Three instances that join while the
    # writes go on must still see that they have folded all there is, and become ready.
    command = start_command("--rate", "50")
    try:
        command.wait_ready()
        time.sleep(5)
        instances = [
            start_query(ES_ORDERS_STATE_DIR=str(tmp_path / f"instance-{n}")) for n in range(3)
        ]
        readiness: dict[int, list[int]] = {n: [] for n in range(3)}
        deadline = time.monotonic() + 60  # three joins and rebalances on two busy cores
        while time.monotonic() < deadline and not all(
            r[-20:] == [200] * 20 for r in readiness.values()
        ):
            for n, instance in enumerate(instances):
                try:
                    readiness[n].append(instance.get("/health/ready").status_code)
                except httpx.TransportError:
                    continue  # not listening yet
            time.sleep(0.05)
        simulated = command.get("/orders/1").json()["version"]
        time.sleep(0.5)  # order 1 changes about every 60 ms at 50 commands/s
        # Each ready (20 answers in a row) while the writes still go on, not 503 for as
        # long as they do.
        for n, seen in readiness.items():
            assert seen[-20:] == [200] * 20, (n, len(seen), seen[-40:], instances[n].log_tail())
        assert command.get("/orders/1").json()["version"] > simulated, "the writes went on"
    finally:
        command.stop()
