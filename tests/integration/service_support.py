"""Run es-orders services as real processes against the session broker, and stop them by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from es_orders.brokers import free_port
from es_orders.codec import LegacyUpdate, decode_record
from es_orders.domain import Event
from es_orders.processes import spawn
from tests.integration.runtime_support import read_all


def service_env(
    bootstrap_servers: str, prefix: str, state_dir: Path, **extra: str
) -> dict[str, str]:
    """ES_ORDERS_* for a service on topics and groups of its own (named from ``prefix``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_ORDERS_")}
    env.update(
        {
            "ES_ORDERS_BOOTSTRAP_SERVERS": bootstrap_servers,
            "ES_ORDERS_EVENTS_TOPIC": f"{prefix}-events",
            "ES_ORDERS_STATE_TOPIC": f"{prefix}-state",
            "ES_ORDERS_DLQ_TOPIC": f"{prefix}-dlq",
            "ES_ORDERS_APPLICATION_ID": f"{prefix}-query",
            "ES_ORDERS_COMMAND_APPLICATION_ID": f"{prefix}-command",
            "ES_ORDERS_STATE_DIR": str(state_dir),
            "ES_ORDERS_HOST": "127.0.0.1",
            "ES_ORDERS_LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


def children_of(pid: int) -> list[int]:
    """The PIDs of ``pid``'s child processes (from /proc: Linux only)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


class ServiceProcess:
    """``python -m es_orders <args>`` with its output in a log file; ``stop()`` ends it by PID."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        # Tied to this test process: a test that fails before it stops a service (or a
        # killed pytest) leaves nothing running.
        self.process = spawn([sys.executable, "-m", "es_orders", *args], log_path=log_path, env=env)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_for(self, url: str, timeout: float = 60) -> None:
        """Wait until ``url`` answers 200; fail with the log if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{url} not ready within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (negative: killed)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


# Ports already given to a service by this test process.
_given_ports: set[int] = set()


def fresh_port() -> int:
    """A port free now that no service of this test process was given before.

    ``free_port()`` alone is free when asked, and the process started on it binds it only
    later: two services started back to back were once given the same port (the second
    exited with EADDRINUSE), and a restarted instance could get the port, and so the URL,
    of the one it replaces.
    """
    for _ in range(100):
        port = free_port()
        if port not in _given_ports:
            _given_ports.add(port)
            return port
    raise AssertionError("no port free that was not given before")


class Service(ServiceProcess):
    """A command or query service on a free port."""

    def __init__(self, subcommand: str, env: dict[str, str], log_dir: Path, *args: str) -> None:
        self.port = fresh_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [subcommand, "--port", str(self.port), *args],
            env,
            log_dir / f"{subcommand}-{self.port}.log",
        )

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_for(f"{self.url}/health/ready", timeout)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        """Wait until the service logs ``text``; fail with the log if it exits first."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode}:\n{self.log_tail()}")
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{self.log_tail()}"
            time.sleep(0.02)

    def kill9(self) -> None:
        """SIGKILL the service and its fold workers at once, as a machine crash would (a
        worker that outlived its service would stop gracefully instead)."""
        workers = children_of(self.pid)
        self.process.send_signal(signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)

    def worker_pids(self) -> list[int]:
        """The fold worker processes, as /stats names them."""
        return [w["pid"] for w in self.get("/stats").json()["workers"] if w["alive"]]

    def all_orders(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Walk GET /orders by its Link headers: every order, in id order."""
        orders: list[dict[str, Any]] = []
        response = self.get("/orders", limit=limit)
        while True:
            assert response.status_code == 200, response.text
            orders += response.json()
            link = response.links.get("next")
            if link is None:
                return orders
            response = httpx.get(f"{self.url}{link['url']}", timeout=10)


def events_of(kafka_config: dict[str, Any], topic: str) -> dict[str, list[Event]]:
    """Every event of the topic, decoded (a record that is no typed event fails the test)."""
    by_order: dict[str, list[Event]] = {}
    for message in read_all(kafka_config, topic):
        key = message.key()
        decoded = decode_record(key, message.value(), message.timestamp()[1])
        assert not isinstance(decoded, LegacyUpdate), decoded
        assert key == decoded.order_id.encode()
        by_order.setdefault(decoded.order_id, []).append(decoded)
    return by_order


def child_pids(pid: int) -> set[int]:
    """The PIDs of the live processes whose parent is ``pid`` (from /proc)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name, in parentheses, may contain spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            children.add(int(entry.name))
    return children


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
