"""Every order's history in the query store: equal to the log, rebuilt after a restore."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from es_orders.codec import (
    CodecError,
    LegacyUpdate,
    decode_record,
    encode_event,
    state_to_dict,
    upcast,
)
from es_orders.domain import OrderState, evolve
from es_orders.runtime.history import HistoryRebuildingError, state_of
from es_orders.runtime.view import MaterializedView
from tests.integration.runtime_support import (
    RunningMaterializer,
    create_topics,
    materializer_config,
    produce,
    read_all,
)
from tests.integration.test_materializer import all_vectors
from tests.vectors import VectorRecord, normalize_state

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class OrderLog:
    """What the log says of one order, folded by hand: each applied event, and the state
    after it (a record's fold, for the order's prefix of the log up to it)."""

    events: list[tuple[int, int, int, dict[str, Any]]]  # version, offset, timestamp, JSON
    states: list[OrderState]


def fold_log(messages: list[Any]) -> dict[str, OrderLog]:
    """Each order's history from the records of the events topic, in partition order."""
    logs: dict[str, OrderLog] = defaultdict(lambda: OrderLog([], []))
    current: dict[str, OrderState] = {}
    for message in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        _, timestamp = message.timestamp()
        try:
            decoded = decode_record(message.key(), message.value(), timestamp)
        except CodecError:
            continue  # a dead letter: not part of any order's history
        before = current.get(decoded.order_id)
        if isinstance(decoded, LegacyUpdate):
            events = list(upcast(decoded, before))
            wire = [json.loads(encode_event(e)) for e in events]
        else:
            events, wire = [decoded], [json.loads(message.value())]
        for event, body in zip(events, wire, strict=True):
            evolved = evolve(before, event)
            if evolved.state is before or event.version <= (before.version if before else 0):
                continue  # a duplicate: the log's order kept the first
            before = evolved.state
            log = logs[event.order_id]
            log.events.append((event.version, message.offset(), timestamp, body))
            log.states.append(before)
        if before is not None:
            current[decoded.order_id] = before
    return dict(logs)


def state_at(log: OrderLog, version: int) -> OrderState | None:
    """The fold of the order's log prefix whose state is at or below ``version``."""
    found = None
    for state in log.states:
        if state.version <= version:
            found = state
    return found


def history_of(view: MaterializedView, order_id: str) -> list[tuple[int, int, int, Any]]:
    found = view.events(order_id, 0, 10_000)
    assert found is not None, order_id
    _, rows = found
    return [(v, o, t, json.loads(e)) for v, o, t, e in rows]


def normalized(state: OrderState | None) -> dict[str, Any] | None:
    return None if state is None else normalize_state(state_to_dict(state))


def assert_history_is_the_log(view: MaterializedView, logs: dict[str, OrderLog]) -> None:
    for order_id, log in logs.items():
        assert history_of(view, order_id) == log.events, order_id
        for version in range(1, log.states[-1].version + 2):
            events = view.events_until(order_id, version=version)
            assert events is not None
            assert normalized(state_of(events)) == normalized(state_at(log, version)), (
                order_id,
                version,
            )


def test_vectors_history_and_every_version_are_the_fold_of_the_log_prefix(
    kafka_config: dict[str, Any], topic_prefix: str, tmp_path: Path
) -> None:
    topics = create_topics(kafka_config, topic_prefix)
    records, expected, _ = all_vectors()
    produce(kafka_config, topics["events"], records)
    config = dataclasses.replace(
        materializer_config(kafka_config, topics, tmp_path / "state", f"{topic_prefix}-g"),
        history=True,
    )
    logs = fold_log(read_all(kafka_config, topics["events"]))
    assert set(logs) == set(expected)
    assert any(len(log.events) > len({e[1] for e in log.events}) for log in logs.values()), (
        "the vectors hold a legacy record upcast into several events"
    )

    with RunningMaterializer(config) as running:
        view = running.view
        running.wait_until(lambda: view.readiness().ready)
        assert_history_is_the_log(view, logs)
        assert view.events("no-such-order", 0, 10) is None
        # Between two events recorded at different instants, the earlier state.
        for order_id, log in logs.items():
            (v1, _, t1, _), (_, _, t2, _) = log.events[0], log.events[1]
            if t2 - t1 >= 2:
                events = view.events_until(order_id, timestamp=(t1 + t2) // 2)
                assert events is not None
                assert normalized(state_of(events)) == normalized(state_at(log, v1))
                before = view.events_until(order_id, timestamp=t1 - 1)
                assert before == []  # not created yet: the API's 404
                break
        else:
            pytest.fail("no order with two events at different instants in the vectors")

    # Without local files the states come back from the changelog and the history is
    # rebuilt from the events topic, the same as it was.
    shutil.rmtree(tmp_path / "state")
    with RunningMaterializer(config) as running:
        view = running.view
        running.wait_until(lambda: view.readiness().ready)
        assert running.materializer.counters.consumed == 0  # states restored, not replayed
        running.wait_until(lambda: _history_complete(running))
        assert_history_is_the_log(view, logs)


def _history_complete(running: RunningMaterializer) -> bool:
    parts = running.board.snapshot.held.values()
    return bool(parts) and all(p.history == "complete" for p in parts)


def typed_events(count: int, orders: int, first: int = 0) -> list[VectorRecord]:
    """``count`` typed events over ``orders`` orders, from the ``first``-th event on: each
    order created first, then priced again and again."""
    records = []
    for n in range(first, first + count):
        order_id, version = f"o{n % orders}", n // orders + 1
        body: dict[str, Any] = {
            "event_id": f"e{n}",
            "order_id": order_id,
            "version": version,
            "occurred_at": "2026-11-30T12:00:00.000Z",
            "schema_version": 1,
        }
        if version == 1:
            body["type"] = "OrderCreated"
            body["data"] = {"user_id": "u", "product_id": "p", "quantity": 1, "price": 100}
        else:
            body["type"] = "PriceChanged"
            body["data"] = {"price": version}
        records.append(
            VectorRecord(order_id.encode(), json.dumps(body).encode(), {}, 1_764_504_000_000 + n)
        )
    return records


def test_a_hole_after_what_the_history_holds_is_rebuilt_from_there(
    kafka_config: dict[str, Any], topic_prefix: str, tmp_path: Path
) -> None:
    """An instance that comes back to a partition another folded meanwhile: its history
    lacks only what the other folded, and only that is rebuilt, from where it stopped."""
    topics = create_topics(kafka_config, topic_prefix, partitions=1)
    config = dataclasses.replace(
        materializer_config(kafka_config, topics, tmp_path / "a", f"{topic_prefix}-g"),
        partitions=1,
        history=True,
    )
    first = typed_events(2_000, 50)
    produce(kafka_config, topics["events"], first)
    with RunningMaterializer(config) as running:
        running.wait_until(lambda: running.materializer.counters.consumed == len(first))
    produce(kafka_config, topics["events"], typed_events(2_000, 50, first=len(first)))
    other = dataclasses.replace(config, state_dir=tmp_path / "b")
    with RunningMaterializer(other) as running:
        running.wait_until(lambda: running.materializer.counters.consumed == 2_000)

    logs = fold_log(read_all(kafka_config, topics["events"], partitions=1))
    with RunningMaterializer(config) as running:
        running.wait_until(lambda: running.view.readiness().ready)
        assert running.materializer.counters.consumed == 0  # the group was past it all
        running.wait_until(lambda: _history_complete(running))
        assignment = running.materializer._assignment
        assert assignment is not None
        rebuild = assignment.partitions[0].rebuild
        assert rebuild is not None and (rebuild.start, rebuild.target) == (2_000, 4_000)
        assert_history_is_the_log(running.view, logs)


def test_history_requests_wait_for_the_rebuild_after_a_restore(
    kafka_config: dict[str, Any], topic_prefix: str, tmp_path: Path
) -> None:
    """A long history (200,000 events of 20 orders on one partition): once the changelog
    is restored the latest states are served at once, the history only after its rebuild."""
    topics = create_topics(kafka_config, topic_prefix, partitions=1)
    records = typed_events(200_000, 20)
    produce(kafka_config, topics["events"], records)
    config = dataclasses.replace(
        materializer_config(kafka_config, topics, tmp_path / "state", f"{topic_prefix}-g"),
        partitions=1,
        history=True,
        max_batch=200_000,
    )
    with RunningMaterializer(config) as running:
        running.wait_until(lambda: running.materializer.counters.consumed == len(records), 120)
        running.wait_until(lambda: running.view.readiness().ready)
        first = history_of(running.view, "o7")
        assert [v for v, *_ in first] == list(range(1, 10_001))

    shutil.rmtree(tmp_path / "state")
    with RunningMaterializer(config) as running:
        view = running.view
        running.wait_until(lambda: view.readiness().ready)
        state = view.get("o7")
        assert state is not None and json.loads(state)["version"] == 10_000
        with pytest.raises(HistoryRebuildingError):
            view.events("o7", 0, 10)
        status = next(iter(running.board.snapshot.held.values()))
        assert status.history == "rebuilding" and status.history_target == len(records)
        running.wait_until(lambda: _history_complete(running), 120)
        assert history_of(view, "o7") == first
        events = view.events_until("o7", version=5_000)
        assert events is not None
        rebuilt = state_of(events)
        assert rebuilt is not None and (rebuilt.version, rebuilt.price) == (5_000, 5_000)


def test_history_off_keeps_latest_states_only(start_query: Any, start_command: Any) -> None:
    query = start_query(ES_ORDERS_HISTORY="off")
    command = start_command("--no-simulate")
    query.wait_ready()
    command.wait_ready()
    order = {"id": "h1", "user_id": "u", "product_id": "p", "quantity": 1, "price": 5}
    created = httpx.post(f"{command.url}/orders", json=order, timeout=30)
    assert created.status_code == 201, created.text
    latest = query.get("/orders/h1", min_version=1)
    assert latest.status_code == 200 and latest.json()["version"] == 1
    for path, params in [("/orders/h1/events", {}), ("/orders/h1", {"version": 1})]:
        answer = query.get(path, **params)
        assert answer.status_code == 501, answer.text
        assert answer.json()["type"].endswith("/problems/history-off")
    cluster = query.get("/cluster").json()
    parts = [p for m in cluster["members"] for p in m["partitions"]]
    assert parts and all(p["history"] is None for p in parts)
    assert query.stop() == 0 and command.stop() == 0
