"""Fixtures for tests against a real dev broker (Tansu), started once per test session.

Mark each integration test module with ``pytestmark = pytest.mark.integration``.
Habits the dev broker needs (DESIGN.md, "Kafka"):

- Consumers in a group: ``session.timeout.ms`` about 6000 and ``heartbeat.interval.ms``
  about 1000, or the first join takes ~23 s (``consumer_config`` sets both).
- Create topics through the admin API first (``ensure_topics``): subscribing to a
  missing topic fails, and asking metadata for one by name auto-creates it.
- Do not trust ListOffsets "latest"; use ``enable.partition.eof`` to find the end.
- Use confluent-kafka; aiokafka's idempotent producer fails against it.
- Topics live as long as the session broker: name them from ``topic_prefix``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from es_orders.devbroker import DevBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[DevBroker]:
    """A dev broker on a free loopback port, stopped (and waited for) after the session."""
    with DevBroker.start() as dev_broker:
        yield dev_broker


@pytest.fixture
def kafka_config(broker: DevBroker) -> dict[str, Any]:
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
    """A consumer in a fresh group, reading from the start, with dev-broker-friendly timings."""
    return {
        **kafka_config,
        "group.id": f"{topic_prefix}-group",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
    }
