"""What every broker engine shares: loopback ports, the readiness check, process stops.

Ready means the cluster answers a metadata request with *its own* cluster id and lists
every one of its nodes: a port that answers could belong to another broker, and a
cluster that answers before all its nodes registered would place replicas unevenly (or
refuse a replication factor of 3).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from es_orders.errors import BrokerError

_log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_POLL_INTERVAL = 0.1


class PortTakenError(BrokerError):
    """Something else listens on a port; worth another attempt if we picked the port."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that are all free right now."""
    for _ in range(50):
        first = free_port()
        if first + count <= 65535 and all(port_is_free(first + i) for i in range(count)):
            return first
    raise BrokerError(f"found no {count} consecutive free ports on {LOOPBACK}")


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether nothing listens on ``host:port``, so a server can bind it now."""
    with socket.socket() as sock:
        # Servers here bind with SO_REUSEADDR as well, so connections lingering in
        # TIME_WAIT do not block them; only a listening socket does, and that we detect.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_tail(path: Path, max_chars: int = 2000) -> str:
    """The last ``max_chars`` characters of a log file, for error messages."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - max_chars))
            return log.read().decode("utf-8", errors="replace").strip()
    except OSError as exc:
        return f"(log unreadable: {exc})"


def wait_for_cluster(
    ports: list[int],
    cluster_id: str,
    timeout: float,
    failure: Callable[[], str | None],
) -> None:
    """Wait until the brokers on ``ports`` answer as one cluster with every node registered.

    ``failure`` is called on every poll; a message from it (a node exited) ends the wait
    with a ``BrokerError``. A metadata answer with another cluster id is a ``PortTakenError``.
    """
    deadline = time.monotonic() + timeout
    bootstrap = ",".join(f"{LOOPBACK}:{port}" for port in ports)
    admin: AdminClient | None = None
    while True:
        problem = failure()
        if problem is not None:
            raise BrokerError(problem)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(f"did not answer within {timeout:g} s with every node registered")
        # Connect first: librdkafka would log every refused connection to stderr.
        if all(accepts_connections(port) for port in ports):
            admin = admin or AdminClient({"bootstrap.servers": bootstrap})
            try:
                metadata = admin.list_topics(timeout=min(remaining, 2.0))
            except KafkaException:
                _log.debug("cluster not answering metadata yet bootstrap=%s", bootstrap)
            else:
                if metadata.cluster_id not in (None, cluster_id):
                    raise PortTakenError(
                        f"another broker (cluster id {metadata.cluster_id}) answers on {bootstrap}"
                    )
                if metadata.cluster_id == cluster_id and len(metadata.brokers) == len(ports):
                    return
                _log.debug(
                    "cluster answering, not complete yet brokers=%s", sorted(metadata.brokers)
                )
        time.sleep(_POLL_INTERVAL)


class Broker(ABC):
    """A running broker or cluster on the loopback interface; ``stop()`` it or use ``with``."""

    engine: str  # "kafka" or "tansu"

    @property
    @abstractmethod
    def bootstrap_servers(self) -> str:
        """The ``bootstrap.servers`` value that reaches this broker (every node of it)."""

    @property
    @abstractmethod
    def running(self) -> bool:
        """Whether every process of the broker is still running."""

    @property
    @abstractmethod
    def log_path(self) -> Path:
        """Where the broker writes its log (a cluster: its first node's)."""

    @property
    @abstractmethod
    def pids(self) -> list[int]:
        """The process ids of every running process of the broker."""

    # librdkafka settings its clients should have on top of es-orders' defaults.
    client_config: dict[str, str] = {}  # noqa: RUF012 (never mutated; subclasses replace it)

    def client_env(self) -> dict[str, str]:
        """``client_config`` as the ``ES_ORDERS_KAFKA__*`` variables a service reads."""
        return {
            "ES_ORDERS_KAFKA__" + name.upper().replace(".", "_"): value
            for name, value in self.client_config.items()
        }

    @abstractmethod
    def kind(self) -> str:
        """What runs, for a person: the engine, version, nodes and where the data lives."""

    def describe(self) -> str:
        """``kind()`` and where it answers."""
        return f"{self.kind()} on {self.bootstrap_servers}"

    @abstractmethod
    def exit_report(self) -> str:
        """What exited and with which code, and the end of its log: for an error message."""

    @abstractmethod
    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop every process and wait for the exits; the exit code (0: clean)."""

    def log_tail(self, max_chars: int = 2000) -> str:
        return log_tail(self.log_path, max_chars)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
