"""The materializer against a real broker: golden vectors, dead letters, restore."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from es_orders.runtime.view import MaterializedView
from es_orders.workload import encoded, order_events
from tests.integration.runtime_support import (
    RunningMaterializer,
    create_topics,
    expected_fold,
    materializer_config,
    produce,
    read_all,
)
from tests.vectors import VectorCase, VectorRecord, load_cases, normalize_state

pytestmark = pytest.mark.integration


def namespaced(case: VectorCase) -> tuple[list[VectorRecord], dict[str, dict[str, Any]]]:
    """The case's records and states with order ids prefixed by the case name, so that
    every case can share one topic."""

    def rename(order_id: str) -> str:
        return f"{case.name}.{order_id}"

    records = []
    for record in case.records:
        value = record.value
        try:
            body = json.loads(value)
        except ValueError:
            body = None
        if isinstance(body, dict):
            for field in ("order_id", "id"):
                if isinstance(body.get(field), str):
                    body[field] = rename(body[field])
            value = json.dumps(body).encode()
        key = None if record.key is None else rename(record.key.decode()).encode()
        records.append(replace(record, key=key, value=value))
    states = {rename(oid): {**s, "id": rename(oid)} for oid, s in case.expected_states.items()}
    return records, states


def all_vectors() -> tuple[list[VectorRecord], dict[str, dict[str, Any]], int]:
    records: list[VectorRecord] = []
    states: dict[str, dict[str, Any]] = {}
    dlq = 0
    for case in load_cases():
        case_records, case_states = namespaced(case)
        records += case_records
        states.update(case_states)
        dlq += case.dlq
    return records, states, dlq


def view_states(view: MaterializedView) -> dict[str, dict[str, Any]]:
    return {oid: normalize_state(json.loads(body)) for oid, body in view.page(None, 1000)}


def test_vectors_fold_restore_and_dead_letters(
    kafka_config: dict[str, Any], topic_prefix: str, tmp_path: Path
) -> None:
    topics = create_topics(kafka_config, topic_prefix)
    records, expected, dlq = all_vectors()
    produce(kafka_config, topics["events"], records)
    config = materializer_config(kafka_config, topics, tmp_path / "state", f"{topic_prefix}-g")
    expected_states = {oid: normalize_state(s) for oid, s in expected.items()}

    with RunningMaterializer(config) as running:
        view = running.view
        running.wait_until(lambda: view.readiness().ready)
        assert view_states(view) == expected_states
        counters = running.materializer.counters
        assert counters.consumed == len(records)
        assert counters.dead_letters == dlq
        assert (counters.duplicates, counters.gaps) == (2, 1)
        first_id = sorted(expected)[0]
        assert json.loads(view.get(first_id) or b"null")["id"] == first_id
        assert view.get("no-such-order") is None

    dead = read_all(kafka_config, topics["dlq"])
    assert len(dead) == dlq
    for message in dead:
        headers = dict(message.headers())
        assert headers["error"]
        topic, partition, offset = headers["source"].decode().rsplit("/", 2)
        assert topic == topics["events"] and int(partition) >= 0 and int(offset) >= 0
    changelog = read_all(kafka_config, topics["state"])
    assert {m.key().decode() for m in changelog} == set(expected)

    # A clean restart with the local files reads only the changelog tail: nothing.
    with RunningMaterializer(config) as running:
        view = running.view
        running.wait_until(lambda: view.readiness().ready)
        assert view_states(view) == expected_states
        assert running.materializer.counters.restored_records == 0
        assert running.materializer.counters.consumed == 0

    # Without local files the state comes back from the changelog, not from the events.
    shutil.rmtree(tmp_path / "state")
    with RunningMaterializer(config) as running:
        view = running.view
        running.wait_until(lambda: view.readiness().ready)
        assert view_states(view) == expected_states
        assert running.materializer.counters.restored_records == len(changelog)
        assert running.materializer.counters.consumed == 0


def test_partitions_move_between_instances_through_the_changelog(
    kafka_config: dict[str, Any], topic_prefix: str, tmp_path: Path
) -> None:
    topics = create_topics(kafka_config, topic_prefix)
    events = [VectorRecord(k, v, {}, 0) for k, v in encoded(order_events(600, 12_000, seed=5))]
    first, second = events[:6_000], events[6_000:]
    group = f"{topic_prefix}-g"
    config_a = materializer_config(kafka_config, topics, tmp_path / "a", group)
    config_b = materializer_config(kafka_config, topics, tmp_path / "b", group)
    produce(kafka_config, topics["events"], first)

    def complete(view: MaterializedView, records: list[VectorRecord]) -> bool:
        return view.readiness().ready and view_states(view) == expected_fold(records)

    with RunningMaterializer(config_a) as a:
        view_a = a.view
        a.wait_until(lambda: complete(view_a, first))
        with RunningMaterializer(config_b) as b:
            view_b = b.view
            b.wait_until(lambda: len(b.board.snapshot.readable) > 0 and view_b.readiness().ready)
            a.wait_until(lambda: len(a.board.snapshot.readable) < 3 and view_a.readiness().ready)
            # B took its partitions over from A's changelog, not from the events.
            assert b.materializer.counters.restored_records > 0
            assert b.materializer.counters.consumed == 0
            produce(kafka_config, topics["events"], second)
            b.wait_until(lambda: b.materializer.counters.consumed > 0)
            a.wait_until(
                lambda: {**view_states(view_a), **view_states(view_b)} == expected_fold(events)
            )
            # Each instance answers for the partitions it holds, and only for those.
            assert set(view_states(view_a)).isdisjoint(view_states(view_b))
        # B left: A gets every partition back and brings its stale copy up to date from
        # the changelog tail B wrote, without folding B's events again.
        consumed_before = a.materializer.counters.consumed
        a.wait_until(lambda: len(a.board.snapshot.readable) == 3 and complete(view_a, events))
        assert a.materializer.counters.consumed == consumed_before
