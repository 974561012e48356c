"""``es-orders up``: everything starts, answers, and stops without leaving a process behind.

These runs start a broker of their own (on a free port), not the session broker: Apache
Kafka where it can run (``--engine auto``), and Tansu in the zero-JVM smoke test.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from es_orders.brokers import Broker, free_port
from tests.integration.conftest import engine_or_skip
from tests.integration.runtime_support import produce, read_all
from tests.integration.service_support import ServiceProcess, child_pids, process_exists
from tests.integration.test_materializer import all_vectors
from tests.vectors import normalize_state

pytestmark = pytest.mark.integration


class Up(ServiceProcess):
    def __init__(
        self,
        tmp_path: Path,
        *args: str,
        query_port: int | None = None,
        command_port: int | None = None,
        env_extra: dict[str, str] | None = None,
    ) -> None:
        self.command_port = command_port or free_port()
        self.query_port = query_port or free_port()
        self.kafka_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ES_ORDERS_")}
        env.update(env_extra or {})
        super().__init__(
            [
                "up",
                "--kafka-port",
                str(self.kafka_port),
                "--command-port",
                str(self.command_port),
                "--query-port",
                str(self.query_port),
                "--state-dir",
                str(tmp_path / "state"),
                *args,
            ],
            {**env, "ES_ORDERS_LOG_LEVEL": "INFO"},
            tmp_path / "up.log",
        )

    def wait_up(self, processes: int = 3) -> set[int]:
        """Wait for the banner; the PIDs of the broker and the two services."""
        deadline = time.monotonic() + 90
        while "es-orders is up" not in self.log_tail(100_000):
            assert self.process.poll() is None, self.log_tail()
            assert time.monotonic() < deadline, self.log_tail()
            time.sleep(0.1)
        children = child_pids(self.pid)
        assert len(children) == processes, (children, self.log_tail())
        return children

    def state_dir(self) -> Path:
        found = re.search(r"state_dir=(\S+)", self.log_tail(100_000))
        assert found is not None, self.log_tail()
        return Path(found.group(1))


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    process = Up(tmp_path, "--rate", "5")
    yield process
    process.stop(timeout=60)


def test_up_serves_the_demo_and_stops_on_sigterm(up: Up) -> None:
    children = up.wait_up()
    state_dir = up.state_dir()
    assert state_dir.is_dir()

    # The README's first step: the simulator's order "1" shows in the query service.
    deadline = time.monotonic() + 30
    while httpx.get(f"http://127.0.0.1:{up.query_port}/orders/1").status_code != 200:
        assert time.monotonic() < deadline, up.log_tail()
        time.sleep(0.2)
    assert httpx.get(f"http://127.0.0.1:{up.command_port}/docs").status_code == 200

    started = time.monotonic()
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(60) == 0, up.log_tail()
    assert time.monotonic() - started < 30
    assert not [pid for pid in children if process_exists(pid)]
    assert not state_dir.exists()  # a run on a temporary broker leaves no state behind
    assert "Stopped." in up.log_tail()


def test_up_stops_everything_when_a_service_dies(up: Up) -> None:
    children = up.wait_up()
    query = next(
        pid
        for pid in children
        if b" query" in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    )
    os.kill(query, signal.SIGKILL)
    try:
        code = up.process.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"up did not stop after a service died:\n{up.log_tail()}")
    assert code == 1
    assert "the query service exited on its own" in up.log_tail()
    assert not [pid for pid in children if process_exists(pid)]


def test_up_refuses_a_taken_port_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        up = Up(tmp_path, query_port=taken.getsockname()[1])
        assert up.process.wait(30) == 1
    assert f"port {up.query_port} for the query service is taken" in up.log_tail()
    assert "engine" not in up.log_tail(), "no broker was started"


def test_up_on_tansu_folds_the_golden_vectors(tmp_path: Path) -> None:
    """The zero-JVM path end to end: Tansu, ``es-orders up``, the golden vectors."""
    engine_or_skip("tansu")
    up = Up(tmp_path, "--engine", "tansu", "--no-simulate")
    try:
        up.wait_up()
        assert "engine tansu: chosen with --engine tansu" in up.log_tail(100_000)
        assert "Tansu (in memory, one node)" in up.log_tail(100_000)
        kafka = {"bootstrap.servers": f"127.0.0.1:{up.kafka_port}"}
        records, expected, dlq = all_vectors()
        produce(kafka, "es-orders", records)

        want = {oid: normalize_state(state) for oid, state in expected.items()}
        seen: dict[str, object] = {}
        deadline = time.monotonic() + 60
        while seen != want and time.monotonic() < deadline:
            page = httpx.get(f"http://127.0.0.1:{up.query_port}/orders", params={"limit": 1000})
            seen = {o["id"]: normalize_state(o) for o in page.json()}
            time.sleep(0.2)
        assert seen == want
        assert len(read_all(kafka, "es-orders-dlq")) == dlq

        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(60) == 0, up.log_tail()
    finally:
        up.stop(timeout=60)


def _gone_within(pids: set[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(process_exists(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_killed_up_takes_its_children_along_and_the_next_up_cleans_up(tmp_path: Path) -> None:
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
    first = Up(tmp_path / "first", "--no-simulate", env_extra={"TMPDIR": str(tmp_path)})
    children = first.wait_up()
    state_dir = first.state_dir()
    kafka_dirs = set(tmp_path.glob("es-orders-kafka-*"))
    assert len(kafka_dirs) == 1, "the broker's temporary data dir is under TMPDIR"

    os.kill(first.pid, signal.SIGKILL)
    first.process.wait(10)

    # No broker or service is left serving under PID 1: the kernel told each to stop.
    assert _gone_within(children, 30), [p for p in children if process_exists(p)]
    assert state_dir.exists(), "a killed up could not clean up after itself"

    # The same --state-dir parent (the last flag wins) and TMPDIR.
    state_parent = str(tmp_path / "first" / "state")
    second = Up(
        tmp_path / "second",
        "--no-simulate",
        "--state-dir",
        state_parent,
        env_extra={"TMPDIR": str(tmp_path)},
    )
    try:
        second.wait_up()
        assert not state_dir.exists(), "the next up removed the killed run's state"
        assert not (kafka_dirs & set(tmp_path.glob("es-orders-kafka-*")))
        assert "removing the directory of a run that was killed" in second.log_tail(100_000)
    finally:
        second.stop(timeout=60)


def test_up_names_the_service_of_every_line_and_uses_the_kafka_it_is_given(
    tmp_path: Path, broker: Broker
) -> None:
    up = Up(
        tmp_path,
        "--no-simulate",
        env_extra={"ES_ORDERS_BOOTSTRAP_SERVERS": broker.bootstrap_servers},
    )
    try:
        up.wait_up(processes=2)  # the two services, no broker of its own
        text = up.log_tail(100_000)
        assert "engine" not in text, "no broker was started"
        assert f"kafka            {broker.bootstrap_servers}   (external)" in text
        lines = text.splitlines()
        assert any(line.startswith("command | ") for line in lines), text
        assert any(line.startswith("query   | ") for line in lines), text
        assert any("partitions assigned" in line for line in lines if line.startswith("query"))
    finally:
        up.stop(timeout=60)


def _free_ports_in_a_row(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 now."""
    for _ in range(50):
        first = free_port()
        if first + count <= 65535 and all(
            _is_free(port) for port in range(first + 1, first + count)
        ):
            return first
    raise AssertionError(f"no {count} consecutive free ports found")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_up_runs_several_instances_that_each_answer_for_every_order(
    tmp_path: Path, broker: Broker
) -> None:
    first = _free_ports_in_a_row(3)
    commands = _free_ports_in_a_row(2)
    up = Up(
        tmp_path,
        "--query-instances",
        "3",
        "--command-instances",
        "2",
        "--rate",
        "5",
        query_port=first,
        command_port=commands + 1,  # and the port below it
        env_extra={"ES_ORDERS_BOOTSTRAP_SERVERS": broker.bootstrap_servers},
    )
    try:
        up.wait_up(processes=5)  # two command instances and three query instances
        urls = [f"http://127.0.0.1:{first + i}" for i in range(3)]
        text = up.log_tail(100_000)
        for i, url in enumerate(urls):
            assert f"query service {i + 1}" in text and url in text, text
        # Every instance knows all three and who holds each partition.
        deadline = time.monotonic() + 30
        while True:
            views = [httpx.get(f"{url}/cluster").json() for url in urls]
            owners = [view["owners"] for view in views]
            settled = all(
                sorted(m["url"] for m in view["members"]) == urls for view in views
            ) and all(o == owners[0] and None not in o.values() for o in owners)
            # Once the group has settled, each of the three holds one of the partitions.
            if settled and set(owners[0].values()) == set(urls):
                break
            assert time.monotonic() < deadline, views
            time.sleep(0.2)
        # The simulator's orders, from every instance, served by the one holding each.
        for order_id in ("1", "2", "3"):
            served = set()
            for url in urls:
                deadline = time.monotonic() + 30
                response = httpx.get(f"{url}/orders/{order_id}")
                while response.status_code != 200:
                    assert time.monotonic() < deadline, response.text
                    time.sleep(0.2)
                    response = httpx.get(f"{url}/orders/{order_id}")
                served.add(response.headers["served-by"])
            assert len(served) == 1 and served <= set(urls), served
        # Each command instance takes a command on any order: one holds it, the other
        # forwards it there.
        command_urls = [f"http://127.0.0.1:{commands + 1}", f"http://127.0.0.1:{commands}"]
        deciders = set()
        for url in command_urls:
            deadline = time.monotonic() + 30
            while True:
                response = httpx.post(f"{url}/orders/1/quantity", json={"quantity": 7})
                if response.status_code == 200:
                    break
                assert response.status_code == 503, response.text
                assert time.monotonic() < deadline, response.text
                time.sleep(0.2)
            deciders.add(response.headers["served-by"])
        assert len(deciders) == 1 and deciders <= set(command_urls), deciders
        lines = up.log_tail(100_000).splitlines()
        for i in range(3):
            assert any(line.startswith(f"query-{i + 1} | ") for line in lines)
        for i in range(2):
            assert any(line.startswith(f"cmd-{i + 1}   | ") for line in lines)
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(60) == 0, up.log_tail()
    finally:
        up.stop(timeout=60)
