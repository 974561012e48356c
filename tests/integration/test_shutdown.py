"""Stopping is bounded: SIGTERM ends a service within 10 s whatever the broker is doing."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from es_orders.brokers import KafkaCluster
from tests.integration.conftest import engine_or_skip
from tests.integration.runtime_support import create_topics
from tests.integration.service_support import Service, service_env

pytestmark = pytest.mark.integration


def test_services_stop_within_10_s_of_sigterm_with_the_broker_gone(
    tmp_path: Path, topic_prefix: str
) -> None:
    choice = engine_or_skip("kafka")
    cluster = KafkaCluster.start(runtime=choice.runtime)
    services: list[Service] = []
    try:
        kafka: dict[str, Any] = {"bootstrap.servers": cluster.bootstrap_servers}
        create_topics(kafka, topic_prefix)
        env = service_env(cluster.bootstrap_servers, topic_prefix, tmp_path / "state")
        services = [
            Service("command", env, tmp_path, "--no-simulate"),
            Service("query", env, tmp_path),
        ]
        for service in services:
            service.wait_ready()
        created = httpx.post(
            f"{services[0].url}/orders",
            json={"id": "7", "user_id": "u", "product_id": "p", "quantity": 1, "price": 5},
            timeout=10,
        )
        assert created.status_code == 201, created.text

        cluster.kill_node(1)
        time.sleep(2)  # let the clients notice: fetches and heartbeats now fail

        for service in services:
            service.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        for service in services:
            service.process.wait(30)
            took = time.monotonic() - started
            assert took <= 10, f"{service.url} took {took:.1f} s to stop:\n{service.log_tail()}"
    finally:
        for service in services:
            service.stop(timeout=5)
        cluster.stop(timeout=10)
