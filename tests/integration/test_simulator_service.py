"""The simulator inside the command service: valid events at its rate, across a restart."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from es_orders.brokers import Broker
from es_orders.domain import Event, OrderCreated, fold
from tests.integration.service_support import Service, events_of, service_env

pytestmark = pytest.mark.integration

RATE = 20.0


def simulate_for(env: dict[str, str], work: Path, seconds: float) -> float:
    """Run the command service with its simulator for ``seconds`` once ready; the time it ran."""
    command = Service("command", env, work, "--rate", str(RATE))
    try:
        command.wait_ready()
        started = time.monotonic()
        time.sleep(seconds)
    finally:
        code = command.stop()
    assert code == 0, command.log_tail()
    return time.monotonic() - started


def assert_valid_histories(by_order: dict[str, list[Event]]) -> None:
    assert set(by_order) == {"1", "2", "3"}
    for events in by_order.values():
        assert [e.version for e in events] == list(range(1, len(events) + 1))
        assert isinstance(events[0], OrderCreated)
        assert not any(isinstance(e, OrderCreated) for e in events[1:])
        assert fold(events).duplicates == 0


def test_the_simulator_sends_valid_events_at_its_rate_and_carries_on_after_a_restart(
    broker: Broker, tmp_path: Path
) -> None:
    prefix = f"sim-{uuid.uuid4().hex[:8]}"
    env = service_env(broker.bootstrap_servers, prefix, tmp_path / "state")
    kafka_config = {"bootstrap.servers": broker.bootstrap_servers}
    topic = f"{prefix}-events"

    ran = simulate_for(env, tmp_path, 3.0)
    first = events_of(kafka_config, topic)
    assert_valid_histories(first)
    count = sum(len(events) for events in first.values())
    # Three creates, then about RATE a second (idempotent no-ops append nothing). The
    # bounds are loose on purpose: the rate is under test, not this machine's timing.
    assert 0.5 * RATE * ran <= count <= 3 + RATE * (ran + 1.5), (count, ran)

    # Against the kept broker (and the kept state), it changes the same orders further.
    simulate_for(env, tmp_path, 1.5)
    second = events_of(kafka_config, topic)
    assert_valid_histories(second)
    assert sum(len(events) for events in second.values()) > count


def test_no_simulate_sends_nothing(broker: Broker, tmp_path: Path) -> None:
    prefix = f"nosim-{uuid.uuid4().hex[:8]}"
    env = service_env(broker.bootstrap_servers, prefix, tmp_path / "state")
    command = Service("command", env, tmp_path, "--no-simulate")
    try:
        command.wait_ready()
        time.sleep(1.0)
        assert httpx.get(f"{command.url}/orders/1").status_code == 404
    finally:
        assert command.stop() == 0, command.log_tail()
    assert events_of({"bootstrap.servers": broker.bootstrap_servers}, f"{prefix}-events") == {}
