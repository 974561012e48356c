"""Fixtures for tests against a real broker, started once per test session.

The broker is Apache Kafka (KRaft, one node, from its Maven Central jars), as users run
it; ``ES_ORDERS_TEST_ENGINE=tansu`` runs the suite on Tansu instead. Without Java 17 or
the jars, the integration tests fail in CI (``CI`` set) and are skipped, with the
reason, elsewhere.

Mark each integration test module with ``pytestmark = pytest.mark.integration``.
Habits that keep tests correct on both engines (docs/architecture.md, "Brokers"):

- Consumers in a group: ``session.timeout.ms`` about 6000 and ``heartbeat.interval.ms``
  about 1000, or Tansu's first join takes ~23 s (``consumer_config`` sets both).
- Create topics through the admin API first (``ensure_topics``): subscribing to a
  missing topic fails, and on Tansu asking metadata for one by name auto-creates it.
- Find a partition's end with ``enable.partition.eof``: Tansu's ListOffsets is wrong.
- Topics live as long as the session broker: name them from ``topic_prefix``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from es_orders.brokers import Broker, Choice, Engine, choose_engine, start_broker
from es_orders.errors import BrokerError
from tests.integration.runtime_support import create_topics
from tests.integration.service_support import Service, service_env


def session_engine() -> Engine:
    """The engine the session broker runs: Apache Kafka unless ES_ORDERS_TEST_ENGINE says."""
    engine = os.environ.get("ES_ORDERS_TEST_ENGINE", "kafka")
    if engine not in ("kafka", "tansu"):
        raise pytest.UsageError(f"ES_ORDERS_TEST_ENGINE must be kafka or tansu, not {engine!r}")
    return cast(Engine, engine)


def engine_or_skip(engine: Engine, *, nodes: int = 1) -> Choice:
    """The engine's choice; without what it needs, a failure in CI and a skip elsewhere."""
    try:
        return choose_engine(engine, nodes=nodes)
    except BrokerError as exc:
        reason = f"{engine} broker cannot run here: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


# What the session broker was, for the report's last lines.
_SESSION_BROKERS: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for described in _SESSION_BROKERS:
        terminalreporter.write_line(f"integration tests ran on: {described}")


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """A broker on free loopback ports, stopped (and waited for) after the session."""
    with start_broker(engine_or_skip(session_engine())) as session_broker:
        _SESSION_BROKERS.append(session_broker.describe())
        yield session_broker


@pytest.fixture
def kafka_config(broker: Broker) -> dict[str, Any]:
    """The librdkafka settings that reach the session broker."""
    return {"bootstrap.servers": broker.bootstrap_servers}


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic name prefix unique to this test, so tests sharing the broker never collide."""
    # Topic names allow only [a-zA-Z0-9._-]; parametrized test names contain brackets.
    readable = re.sub(r"[^a-zA-Z0-9._-]", "-", request.node.name)[:60]
    return f"{readable}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def consumer_config(kafka_config: dict[str, Any], topic_prefix: str) -> dict[str, Any]:
    """A consumer in a fresh group, reading from the start, with timings both engines like."""
    return {
        **kafka_config,
        "group.id": f"{topic_prefix}-group",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
    }


@pytest.fixture
def topics(kafka_config: dict[str, Any], topic_prefix: str) -> dict[str, str]:
    """The events, state and dead letter topics of this test (3 partitions each)."""
    return create_topics(kafka_config, topic_prefix)


@pytest.fixture
def start_query(
    broker: Broker, topics: dict[str, str], topic_prefix: str, tmp_path: Path
) -> Iterator[Callable[..., Service]]:
    """``start_query(*args, **env)`` starts ``es-orders query ARGS`` on this test's topics
    with ``ES_ORDERS_*`` from ``env`` on top; each is SIGKILLed at the end of the test."""
    started: list[Service] = []
    assert topics["events"] == f"{topic_prefix}-events"  # the names service_env gives
    env = service_env(
        broker.bootstrap_servers,
        topic_prefix,
        tmp_path / "state",
        # A killed member holds its partitions until its session times out: keep it short
        # so restarts rejoin quickly (Tansu's join takes half of it).
        ES_ORDERS_KAFKA__SESSION_TIMEOUT_MS="3000",
        ES_ORDERS_KAFKA__HEARTBEAT_INTERVAL_MS="500",
    )

    def start(*args: str, **extra_env: str) -> Service:
        service = Service("query", {**env, **extra_env}, tmp_path, *args)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.process.poll() is None:
            service.kill9()


@pytest.fixture
def start_command(
    broker: Broker, topics: dict[str, str], topic_prefix: str, tmp_path: Path
) -> Iterator[Callable[..., Service]]:
    """``start_command(*args, **env)``: the command service on this test's events topic
    (its own state directory, unless ``ES_ORDERS_STATE_DIR`` in ``env`` names another),
    with ``ES_ORDERS_*`` from ``env`` on top; each is SIGKILLed at the end of the test if
    still running."""
    started: list[Service] = []
    assert topics["events"] == f"{topic_prefix}-events"
    env = service_env(broker.bootstrap_servers, topic_prefix, tmp_path / "command-state")

    def start(*args: str, **extra_env: str) -> Service:
        service = Service("command", {**env, **extra_env}, tmp_path, *args)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.process.poll() is None:
            service.kill9()
