"""Run an HTTP app and its background workers as one process that stops as one.

uvicorn runs on a thread of its own so that this module, not uvicorn, owns SIGINT and
SIGTERM: uvicorn re-raises a captured signal once it has stopped, which would end the
process before the workers (the fold loop) checkpoint and leave their consumer group.

A stop is bounded: whatever the broker is doing (gone, or not answering), the process
exits within ``stop_timeout`` seconds of SIGTERM. A worker still stuck then (say, in a
commit to a broker that is gone) is abandoned with an error in the log; the checkpoint
protocol makes that safe, since an unfinished batch is folded again after a restart.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import uvicorn
from fastapi import FastAPI

from es_orders.processes import stop_requested

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
    stop_timeout: float = 8.0,
    on_started: Callable[[], None] | None = None,
) -> int:
    """Serve ``app`` and run ``workers`` until SIGINT/SIGTERM or a failure; 0 or 1.

    Stopping takes ``stop_timeout`` seconds at most; a thread still running then is
    left behind, the process exits at once with code 1 (``os._exit``), and the log says
    which thread it was.
    """
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

    threads = [_guarded(name, w.run, outcome) for name, w in workers.items()]
    threads.append(_guarded("http", server.run, outcome))
    with stop_requested() as requested:
        for thread in threads:
            thread.start()
        started = False
        while not (outcome.stop.wait(0.1) or requested.is_set()):
            if not started and server.started:
                started = True
                if on_started is not None:
                    on_started()
        outcome.stop.set()
        server.should_exit = True
        for worker in workers.values():
            worker.stop()
        deadline = time.monotonic() + stop_timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    for failure in outcome.failures:
        log.error("failure: %s", failure)
    if stuck:
        log.error("did not stop within %.0f s, exiting anyway: %s", stop_timeout, stuck)
        logging.shutdown()
        # Interpreter shutdown could wait on the stuck thread's client (a librdkafka
        # destructor flushing to a broker that is gone): exit now, as promised.
        os._exit(1)
    return 1 if outcome.failures else 0
