"""Run es-orders services as real processes for tests: start, wait, SIGTERM, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from es_orders.devbroker import free_port


def service_env(
    bootstrap: str, topics: dict[str, str], state_dir: Path, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_ORDERS_")}
    env.update(
        ES_ORDERS_BOOTSTRAP_SERVERS=bootstrap,
        ES_ORDERS_EVENTS_TOPIC=topics["events"],
        ES_ORDERS_STATE_TOPIC=topics["state"],
        ES_ORDERS_DLQ_TOPIC=topics["dlq"],
        ES_ORDERS_STATE_DIR=str(state_dir),
        # A killed member holds its partitions until its session times out: keep it short
        # so restarts in fault tests rejoin quickly (the dev broker's join takes half of it).
        ES_ORDERS_KAFKA__SESSION_TIMEOUT_MS="3000",
        ES_ORDERS_KAFKA__HEARTBEAT_INTERVAL_MS="500",
        **extra,
    )
    return env


class ServiceProcess:
    """``es-orders <command>`` on a free port, its output in a log file."""

    def __init__(self, command: str, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from es_orders.cli import main; main()",
                command,
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params)

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return
            self._assert_alive()
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not logged in {timeout} s:\n{self.log_text()[-3000:]}")

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._assert_alive()
            try:
                if self.get("/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready in {timeout} s:\n{self.log_text()[-3000:]}")

    def _assert_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"service exited with {self.process.returncode}:\n{self.log_text()[-3000:]}"
            )

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.close()

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM and wait; the exit code. Kills (and fails) if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError(f"did not stop within {timeout} s after SIGTERM") from None
        self.close()
        return self.process.returncode

    def close(self) -> None:
        self.client.close()
        self._log.close()

    def all_orders(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Walk GET /orders by its Link headers; every order, in id order."""
        orders: list[dict[str, Any]] = []
        response = self.get("/orders", limit=limit)
        while True:
            assert response.status_code == 200, response.text
            orders += response.json()
            link = response.links.get("next")
            if link is None:
                return orders
            response = self.client.get(link["url"])
