"""The materializer against a real dev broker: golden vectors, dead letters, restore."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from es_orders.runtime.view import MaterializedView
from tests.integration.runtime_support import (
    RunningMaterializer,
    create_topics,
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
        view = MaterializedView(running.materializer)
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
        view = MaterializedView(running.materializer)
        running.wait_until(lambda: view.readiness().ready)
        assert view_states(view) == expected_states
        assert running.materializer.counters.restored_records == 0
        assert running.materializer.counters.consumed == 0

    # Without local files the state comes back from the changelog, not from the events.
    shutil.rmtree(tmp_path / "state")
    with RunningMaterializer(config) as running:
        view = MaterializedView(running.materializer)
        running.wait_until(lambda: view.readiness().ready)
        assert view_states(view) == expected_states
        assert running.materializer.counters.restored_records == len(changelog)
        assert running.materializer.counters.consumed == 0
