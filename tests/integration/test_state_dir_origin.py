"""A state directory from another history of the topics never wedges or misleads a service.

The stores record the cluster id and topic ids their positions belong to; a store from
another cluster (a broker started afresh) or another topic (deleted and created again)
is discarded, with a warning, and rebuilt from the changelog in front of it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from es_orders.brokers import Broker, TansuBroker
from es_orders.workload import encoded, order_events
from tests.integration.conftest import engine_or_skip
from tests.integration.runtime_support import create_topics, expected_fold, produce
from tests.integration.service_support import Service, service_env
from tests.vectors import VectorRecord, normalize_state

pytestmark = pytest.mark.integration

_DISCARDED = "belongs to another history of the topics"


def _records(orders: int, events: int, seed: int) -> list[VectorRecord]:
    return [
        VectorRecord(k, v, {}, 1_795_876_000_000)
        for k, v in encoded(order_events(orders, events, seed=seed))
    ]


def _served(service: Service) -> dict[str, dict[str, Any]]:
    return {o["id"]: normalize_state(o) for o in service.all_orders()}


def _fold_and_stop(
    bootstrap: str, prefix: str, state_dir: Path, records: list[VectorRecord]
) -> None:
    kafka = {"bootstrap.servers": bootstrap}
    create_topics(kafka, prefix)
    produce(kafka, f"{prefix}-events", records)
    env = service_env(bootstrap, prefix, state_dir, ES_ORDERS_WORKERS="2")
    service = Service("query", env, state_dir.parent)
    service.wait_ready()
    assert _served(service) == expected_fold(records)
    assert service.stop() == 0


def test_a_store_from_an_earlier_broker_is_rebuilt_not_wedged(
    tmp_path: Path, topic_prefix: str
) -> None:
    """Tansu keeps nothing across a restart: the new broker has another cluster id."""
    engine_or_skip("tansu")
    state_dir = tmp_path / "state"
    with TansuBroker.start() as first:
        _fold_and_stop(first.bootstrap_servers, topic_prefix, state_dir, _records(30, 300, 1))

    with TansuBroker.start() as second:
        later = _records(5, 20, 2)
        kafka = {"bootstrap.servers": second.bootstrap_servers}
        create_topics(kafka, topic_prefix)
        produce(kafka, f"{topic_prefix}-events", later)
        env = service_env(second.bootstrap_servers, topic_prefix, state_dir, ES_ORDERS_WORKERS="2")
        service = Service("query", env, tmp_path)
        service.wait_ready(timeout=60)
        assert _served(service) == expected_fold(later), "nothing of the first broker's history"
        assert _DISCARDED in service.log_text()
        assert service.stop() == 0


def test_a_store_from_a_deleted_topic_is_rebuilt(
    broker: Broker, tmp_path: Path, topic_prefix: str
) -> None:
    if broker.engine != "kafka":
        pytest.skip("topic ids are what tell a recreated topic apart; Tansu gives none")
    state_dir = tmp_path / "state"
    _fold_and_stop(broker.bootstrap_servers, topic_prefix, state_dir, _records(30, 300, 1))

    kafka = {"bootstrap.servers": broker.bootstrap_servers}
    admin = AdminClient(kafka)
    names = [f"{topic_prefix}-{t}" for t in ("events", "state", "dlq")]
    for future in admin.delete_topics(names, operation_timeout=30).values():
        future.result(30)
    deadline = time.monotonic() + 30
    while set(names) & set(admin.list_topics(timeout=10).topics):  # deleted in the background
        assert time.monotonic() < deadline, "the topics were not deleted"
        time.sleep(0.2)
    later = _records(40, 600, 3)  # more events than before: positions now lie inside
    create_topics(kafka, topic_prefix)
    produce(kafka, f"{topic_prefix}-events", later)

    service = Service(
        "query", service_env(broker.bootstrap_servers, topic_prefix, state_dir), tmp_path
    )
    service.wait_ready(timeout=60)
    assert _served(service) == expected_fold(later)
    assert _DISCARDED in service.log_text()
    assert service.stop() == 0


def test_the_command_service_takes_the_state_dir_flag(
    broker: Broker, tmp_path: Path, topic_prefix: str
) -> None:
    create_topics({"bootstrap.servers": broker.bootstrap_servers}, topic_prefix)
    env = service_env(broker.bootstrap_servers, topic_prefix, tmp_path / "from-env")
    del env["ES_ORDERS_STATE_DIR"]
    flagged = tmp_path / "from-flag"
    service = Service("command", env, tmp_path, "--no-simulate", "--state-dir", str(flagged))
    service.wait_ready()
    assert service.stop() == 0
    stores = sorted(p.name for p in flagged.rglob("*.sqlite"))
    assert stores == [f"{topic_prefix}-events-{n}.sqlite" for n in range(3)]
    assert not (tmp_path / "from-env").exists()
    assert not Path(".es-orders").exists() or not any(Path(".es-orders").rglob(topic_prefix + "*"))
