"""Run an HTTP app and its background workers as one process that stops as one.

uvicorn runs on a thread of its own so that this module, not uvicorn, owns SIGINT and
SIGTERM: uvicorn re-raises a captured signal once it has stopped, which would end the
process before the workers (the fold loop) checkpoint and leave their consumer group.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class Worker(Protocol):
    """A blocking loop (``run``) that returns soon after ``stop``."""

    def run(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class _Outcome:
    stop: threading.Event = field(default_factory=threading.Event)
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failures.append(what)
        self.stop.set()


def _guarded(name: str, target: Callable[[], None], outcome: _Outcome) -> threading.Thread:
    def body() -> None:
        try:
            target()
        except BaseException as exc:  # SystemExit too: uvicorn exits when it cannot bind
            log.exception("%s failed", name)
            outcome.fail(f"{name}: {exc!r}")
            return
        if not outcome.stop.is_set():
            outcome.fail(f"{name} stopped unexpectedly")

    return threading.Thread(target=body, name=name, daemon=True)


def serve(
    app: FastAPI,
    host: str,
    port: int,
    workers: dict[str, Worker],
    *,
    stop_timeout: float = 15.0,
    on_started: Callable[[], None] | None = None,
) -> int:
    """Serve ``app`` and run ``workers`` until SIGINT/SIGTERM or a failure; 0 or 1."""
    outcome = _Outcome()
    # The fold loop holds the GIL most of the time; a thread that wants it waits up to
    # the switch interval (5 ms by default) for each hand-over. A request needs a few,
    # so a shorter interval is what keeps reads fast while the loop is busy.
    sys.setswitchinterval(0.0005)
    # Everything built so far (modules, the app, its models) lives as long as the process:
    # kept out of the collector, a full collection pauses every thread for a few
    # milliseconds instead of tens.
    gc.freeze()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=5,
        )
    )

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping signal=%s", signal.Signals(signum).name)
        outcome.stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads = [_guarded(name, w.run, outcome) for name, w in workers.items()]
    threads.append(_guarded("http", server.run, outcome))
    try:
        for thread in threads:
            thread.start()
        started = False
        while not outcome.stop.wait(0.1):
            if not started and server.started:
                started = True
                if on_started is not None:
                    on_started()
        server.should_exit = True
        for worker in workers.values():
            worker.stop()
        for thread in threads:
            thread.join(stop_timeout)
            if thread.is_alive():
                log.error("%s did not stop within %.0f s", thread.name, stop_timeout)
                outcome.failures.append(f"{thread.name} did not stop")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for failure in outcome.failures:
        log.error("failure: %s", failure)
    return 1 if outcome.failures else 0
