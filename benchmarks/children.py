"""The processes a benchmark starts: es-orders services and the quixstreams baseline.

Each is started by ``processes.spawn``: in a session of its own, so a Ctrl-C in the
terminal reaches only the bench, which then stops its children by PID (services first,
the broker last) from its ``finally`` blocks; and tied to the bench's life, so a killed
bench leaves nothing running. Output goes to a log file, never a pipe nobody reads.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import httpx

from benchmarks.errors import BenchError
from benchmarks.stats import WorkerStats, workers_of
from es_orders.brokers import LOOPBACK, free_port
from es_orders.processes import spawn, stop

log = logging.getLogger(__name__)

_POLL = 0.02
_STATS_EVERY = 0.2
# How long a query service's fold workers may outlive it once it has exited.
_WORKERS_GONE_WITHIN = 10.0


class ChildProcess:
    """A process started by the bench, output in ``log_path``; ``stop`` it (or use ``with``)."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        # Wall clock, comparable with the timestamps services report in logs and /stats.
        self.started_at = time.time()
        self.process = spawn(argv, log_path=log_path, env=env, name=name)
        log.info("started name=%s pid=%s log=%s", name, self.process.pid, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        """Raise ``BenchError`` with the tail of the log if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise BenchError(
                f"{self.name} (pid {self.pid}) exited with code {code}; its log "
                f"{self.log_path} ends with:\n{self.log_text()[-3000:]}"
            )

    def wait_for(
        self, what: str, check: Callable[[], bool], timeout: float, every: float = _POLL
    ) -> float:
        """Poll ``check`` until true; the wall-clock time it first was. Bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if check():
                return time.time()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.name}: {what} not reached within {timeout:g} s; its log "
                    f"{self.log_path} ends with:\n{self.log_text()[-3000:]}"
                )
            time.sleep(every)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code. Safe to repeat."""
        stop(self.process, self.name, timeout)
        self._close()
        return self.returncode

    @property
    def returncode(self) -> int:
        code = self.process.poll()
        return -1 if code is None else code

    def _close(self) -> None:
        """Release what the child needed while it ran."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# The checkout the benchmark runs from: children import ``benchmarks`` from there too.
_CHECKOUT = Path(__file__).resolve().parents[1]


def service_env(settings_env: dict[str, str]) -> dict[str, str]:
    """Our environment without ES_ORDERS_* (the bench names every topic), plus ``settings_env``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_ORDERS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_CHECKOUT), env.get("PYTHONPATH")]))
    env.update(settings_env)
    return env


class ServiceProcess(ChildProcess):
    """``es-orders <command> --port P`` on a free loopback port, with an HTTP client.

    ``name`` (default: the command) tells apart services of one command in logs and errors.
    """

    def __init__(
        self,
        command: str,
        env: dict[str, str],
        log_path: Path,
        extra_args: Sequence[str] = (),
        *,
        port: int | None = None,
        name: str | None = None,
    ) -> None:
        self.port = free_port() if port is None else port
        self.url = f"http://{LOOPBACK}:{self.port}"
        argv = [sys.executable, "-c", "from es_orders.cli import main; main()", command]
        argv += ["--port", str(self.port), *extra_args]
        super().__init__(name or command, argv, env, log_path)
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def stats(self) -> dict[str, Any]:
        response = self.client.get("/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def _answers(self, path: str) -> bool:
        try:
            return self.client.get(path).status_code == 200
        except httpx.TransportError:
            return False  # not listening yet

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Wait for GET /health/ready to answer 200; the wall-clock time it did."""
        return self.wait_for("readiness", lambda: self._answers("/health/ready"), timeout)

    def wait_listening(self, timeout: float = 60.0) -> float:
        return self.wait_for("HTTP", lambda: self._answers("/health/live"), timeout)

    def wait_stats(
        self,
        what: str,
        check: Callable[[dict[str, Any]], bool],
        timeout: float,
        every: float = _STATS_EVERY,
    ) -> dict[str, Any]:
        """Poll /stats until ``check`` holds; those stats.

        Seldom by default: every request takes the service's GIL from the fold it measures.
        """
        seen: dict[str, Any] = {}

        def poll() -> bool:
            nonlocal seen
            try:
                seen = self.stats()
            except httpx.TransportError:
                return False
            return check(seen)

        self.wait_for(what, poll, timeout, every)
        return seen

    def _close(self) -> None:
        self.client.close()
        super()._close()


class QueryProcess(ServiceProcess):
    """``es-orders query`` with ``workers`` fold workers, each with a ``cache_mb`` MiB cache.

    Both go in its environment (ES_ORDERS_WORKERS, ES_ORDERS_CACHE_MB); ``worker_stats``
    checks the count against /stats, so a service that ignored them cannot pass for one
    that ran with them. Fold workers are processes of the service's own: when it has
    stopped, every worker /stats ever named must be gone too.

    Its advertised URL (ES_ORDERS_ADVERTISED_URL, where the other instances of its
    application forward reads, and what its answers name in ``Served-By``) is ``url``.
    """

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        workers: int,
        cache_mb: int,
        name: str = "query",
    ) -> None:
        self.workers = workers
        self.cache_mb = cache_mb
        self._worker_pids: set[int] = set()
        port = free_port()
        env = {
            **env,
            "ES_ORDERS_WORKERS": str(workers),
            "ES_ORDERS_CACHE_MB": str(cache_mb),
            "ES_ORDERS_ADVERTISED_URL": f"http://{LOOPBACK}:{port}",
        }
        super().__init__("query", env, log_path, port=port, name=name)

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        for worker in stats.get("workers") or ():
            pid = worker.get("pid") if isinstance(worker, dict) else None
            if isinstance(pid, int) and pid > 0:
                self._worker_pids.add(pid)
        return stats

    def worker_stats(self, stats: dict[str, Any]) -> list[WorkerStats]:
        """The fold workers in ``stats``: as many as asked for, each running, none restarted."""
        workers = workers_of(stats)
        if len(workers) != self.workers:
            raise BenchError(
                f"{self.name} (pid {self.pid}) reports {len(workers)} fold workers, not the "
                f"{self.workers} of ES_ORDERS_WORKERS: {workers}"
            )
        failed = [w for w in workers if not w.alive or w.restarts]
        if failed:
            raise BenchError(
                f"{self.name} (pid {self.pid}): fold workers exited or were replaced, so what "
                f"they report is not of one run: {failed}; see {self.log_path}"
            )
        return workers

    def stop(self, timeout: float = 30.0) -> int:
        """Stop the service, then check that its fold workers ended with it."""
        code = super().stop(timeout)
        deadline = time.monotonic() + _WORKERS_GONE_WITHIN
        left = self._running_workers()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self._running_workers()
        if left:
            raise BenchError(
                f"{self.name} (pid {self.pid}) exited with {code}, but its fold workers "
                f"{sorted(left)} still run {_WORKERS_GONE_WITHIN:g} s later"
            )
        return code

    def _running_workers(self) -> set[int]:
        return {pid for pid in self._worker_pids if _running(pid)}


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"


@contextmanager
def stopping(*children: ChildProcess) -> Iterator[None]:
    """Stop ``children`` (in reverse order) when the block ends, however it ends.

    Each is stopped even if stopping another failed; a failure to stop is raised once
    all are, unless the block itself failed: that failure is the one to report.
    """
    failed = True
    try:
        yield
        failed = False
    finally:
        first: BenchError | None = None
        for child in reversed(children):
            try:
                child.stop()
            except BenchError as exc:
                log.warning("stop failed: %s", exc)
                first = first or exc
        if first is not None and not failed:
            raise first
