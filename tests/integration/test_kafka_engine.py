"""Apache Kafka as es-orders runs it: a data directory that survives, ports, the CLI.

Each test starts a broker of its own (a JVM), not the session broker.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient

from es_orders.brokers import KafkaCluster, PortTakenError, free_ports
from es_orders.kafka.admin import TopicSpec, ensure_topics
from tests.integration.conftest import engine_or_skip
from tests.integration.service_support import child_pids, process_exists

pytestmark = pytest.mark.integration


def _read_all(bootstrap: str, topic: str) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                return values
            assert error is None, error
            value = message.value()
            assert value is not None
            values.append(value)
    finally:
        consumer.close()
    raise AssertionError(f"did not reach the end of {topic}")


def test_a_data_dir_keeps_the_topics_and_records_across_a_restart(tmp_path: Path) -> None:
    choice = engine_or_skip("kafka")
    data_dir = tmp_path / "kafka"
    with KafkaCluster.start(data_dir=data_dir, runtime=choice.runtime) as first:
        cluster_id = first.cluster_id
        ensure_topics({"bootstrap.servers": first.bootstrap_servers}, [TopicSpec("kept", 1)])
        producer = Producer({"bootstrap.servers": first.bootstrap_servers, "acks": "all"})
        for n in range(5):
            producer.produce("kept", value=f"record-{n}".encode())
        assert producer.flush(10) == 0
    assert (data_dir / "node-1" / "broker.log").exists(), "a given data dir is never removed"

    # Another port, the same data: the cluster and its topics are back.
    with KafkaCluster.start(data_dir=data_dir, runtime=choice.runtime) as second:
        assert second.cluster_id == cluster_id
        values = _read_all(second.bootstrap_servers, "kept")
        metadata = AdminClient({"bootstrap.servers": second.bootstrap_servers}).list_topics(
            timeout=10
        )
        assert metadata.cluster_id == cluster_id
    assert values == [f"record-{n}".encode() for n in range(5)]


def test_a_temporary_data_dir_is_removed_after_a_clean_stop() -> None:
    choice = engine_or_skip("kafka")
    cluster = KafkaCluster.start(runtime=choice.runtime)
    data_dir, pids = cluster.data_dir, cluster.pids

    assert cluster.stop() == 0

    assert not data_dir.exists()
    assert not any(process_exists(pid) for pid in pids)


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    choice = engine_or_skip("kafka")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(PortTakenError, match=f"port {port}"):
            KafkaCluster.start(port, data_dir=tmp_path / "kafka", runtime=choice.runtime)
    assert not (tmp_path / "kafka" / "node-1" / "broker.log").exists(), "no JVM was started"


def test_a_data_dir_of_another_cluster_size_is_refused(tmp_path: Path) -> None:
    choice = engine_or_skip("kafka")
    data_dir = tmp_path / "kafka"
    with KafkaCluster.start(data_dir=data_dir, runtime=choice.runtime):
        pass
    with pytest.raises(Exception, match="1 node"):
        KafkaCluster.start(nodes=3, data_dir=data_dir, runtime=choice.runtime)


@pytest.fixture
def broker_command(tmp_path: Path) -> Iterator[BrokerCommand]:
    """``es-orders broker --engine kafka`` on a free port, once it is ready; killed at the end."""
    engine_or_skip("kafka")
    command = BrokerCommand(tmp_path / "broker.out")
    try:
        command.wait_ready()
        yield command
    finally:
        if command.process.poll() is None:
            command.process.kill()
            command.process.wait()


class BrokerCommand:
    def __init__(self, log: Path) -> None:
        self.log, self.port = log, free_ports(1)
        argv = ["broker", "--engine", "kafka", "--port", str(self.port)]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "es_orders", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while "Ctrl-C to stop" not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)

    def jvm(self) -> int:
        """The PID of the broker's JVM: its only child."""
        children = child_pids(self.process.pid)
        assert len(children) == 1, children
        return children.pop()


def test_es_orders_broker_says_which_engine_and_stops_every_node_on_sigterm(
    broker_command: BrokerCommand,
) -> None:
    text = broker_command.log.read_text()
    assert "es-orders broker: engine kafka: chosen with --engine kafka" in text
    assert "Apache Kafka 4." in text and f"127.0.0.1:{broker_command.port}" in text
    metadata = AdminClient({"bootstrap.servers": f"127.0.0.1:{broker_command.port}"}).list_topics(
        timeout=10
    )
    assert len(metadata.brokers) == 1
    jvm = broker_command.jvm()

    broker_command.process.send_signal(signal.SIGTERM)
    assert broker_command.process.wait(60) == 0, broker_command.log.read_text()
    assert not process_exists(jvm), "the broker's JVM exited with it"


def test_a_killed_es_orders_broker_takes_its_jvm_along(broker_command: BrokerCommand) -> None:
    jvm = broker_command.jvm()

    broker_command.process.kill()
    broker_command.process.wait(10)

    deadline = time.monotonic() + 30
    while process_exists(jvm):
        assert time.monotonic() < deadline, "the JVM outlived its killed parent"
        time.sleep(0.1)
