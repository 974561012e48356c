"""Child processes and stop signals, the one way es-orders handles them.

- ``spawn`` starts a child in a session of its own (a terminal's Ctrl-C reaches only its
  parent, which stops the children in order: services first, brokers last), with its
  output in a log file (never a pipe nobody reads), and, on Linux, tied to its parent's
  life: if the parent dies, even by SIGKILL, the kernel sends the child SIGTERM
  (``PR_SET_PDEATHSIG``), so no broker or service is left running under PID 1.
- ``stop`` ends a child: SIGTERM, a bounded wait, then SIGKILL.
- ``stop_requested`` turns SIGINT and SIGTERM into an event the main loop watches, and
  puts the previous handlers back afterwards.
- ``RunDirectory`` is a temporary directory that records its owner's PID, so a run that
  was killed before it could remove its directory has it removed by the next run.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_OWNER_FILE = "owner.pid"


def _die_with_parent(parent: int) -> Callable[[], None]:
    """What the child runs between fork and exec: ask for SIGTERM when the parent dies.

    Runs in the forked child, so it only calls prctl and getppid (no locks, no imports).
    """
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None

    def arm() -> None:
        if libc is None:
            return
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path | None,
    env: dict[str, str] | None = None,
    name: str = "",
    inherit_output: bool = False,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own that dies with us; output to ``log_path``.

    ``log_path`` None: stdout and stderr come back through one pipe (``process.stdout``),
    which the caller must keep reading; or, with ``inherit_output``, go where ours go.
    ``pass_fds`` stay open in the child. Raises ``OSError`` if the program cannot be run.
    """
    output = log_path.open("ab") if log_path is not None else None
    piped = None if inherit_output else subprocess.PIPE
    try:
        process = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output if output is not None else piped,
            stderr=None if inherit_output and output is None else subprocess.STDOUT,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509 (no locks in it)
        )
    finally:
        if output is not None:
            output.close()  # the child holds its own descriptor
    log.debug("spawned name=%s pid=%s log=%s", name or argv[0], process.pid, log_path)
    return process


def stop(process: subprocess.Popen[bytes], name: str, timeout: float) -> int:
    """SIGTERM ``process`` and wait for its exit; SIGKILL it after ``timeout`` seconds.

    Returns the exit code (negative: ended by that signal). Safe to call more than once.
    """
    stop_all([(process, name)], timeout)
    return process.returncode


class StopRequest:
    """Whether a stop was asked for: a flag that a signal handler may set.

    A handler runs on the main thread between any two bytecodes, even inside another
    handler (``up`` sends SIGTERM twice in a row) or inside a write to stderr. So it only
    sets this flag: no ``threading.Event`` (its lock is not reentrant), no logging (a
    buffered stream refuses a reentrant write). The first ``is_set`` that sees the flag
    logs the signal.
    """

    _POLL = 0.05

    def __init__(self) -> None:
        self._requested = False
        self._signal: int | None = None
        self._logged = False

    def set(self, signum: int | None = None) -> None:
        self._signal = signum
        self._requested = True

    def is_set(self) -> bool:
        if self._requested and not self._logged:
            self._logged = True
            if self._signal is not None:
                log.info("stopping signal=%s", signal.Signals(self._signal).name)
        return self._requested

    def wait(self, timeout: float) -> bool:
        """Sleep until a stop is requested or ``timeout`` passes; whether it was requested."""
        deadline = time.monotonic() + timeout
        while not self._requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(self._POLL, remaining))
        return self.is_set()


def stop_all(children: Sequence[tuple[subprocess.Popen[bytes], str]], timeout: float) -> None:
    """SIGTERM every child once, at once (they stop in parallel), then wait for them all.

    What is still running ``timeout`` seconds later gets SIGKILL. One SIGTERM each: a
    second one could reach a child after it put its default handler back, and kill it
    mid-cleanup.
    """
    started = time.monotonic()
    for process, name in children:
        if process.poll() is None:
            log.info("%s stopping pid=%s", name, process.pid)
            process.terminate()
    for process, name in children:
        try:
            process.wait(max(0.0, started + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning(
                "%s ignored SIGTERM, killing pid=%s timeout_s=%s", name, process.pid, timeout
            )
            process.kill()
            process.wait()
        log.debug(
            "%s exited pid=%s returncode=%s took_s=%.1f",
            name,
            process.pid,
            process.returncode,
            time.monotonic() - started,
        )


@contextlib.contextmanager
def stop_requested() -> Iterator[StopRequest]:
    """A flag set by SIGINT or SIGTERM while the block runs. Main thread only."""
    event = StopRequest()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        event.set(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises ``KeyboardInterrupt`` while the block runs, as Ctrl-C does.

    For code that unwinds through ``finally`` blocks to stop what it started. Main thread only.
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _owner_alive(directory: Path) -> bool:
    try:
        pid = int((directory / _OWNER_FILE).read_text())
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        # No owner file (yet, or not ours), or a process we may not signal: leave it.
        return True
    return True


class RunDirectory:
    """A temporary directory for one run, removed by ``remove()`` or by a later run.

    Each one holds the PID of the process that made it. Creating one first removes the
    directories with the same prefix whose owner is gone: what a killed run left behind.
    """

    def __init__(self, prefix: str, parent: Path | None = None) -> None:
        parent_dir = Path(parent) if parent is not None else Path(tempfile.gettempdir())
        parent_dir.mkdir(parents=True, exist_ok=True)
        for stale in parent_dir.glob(f"{prefix}*"):
            if stale.is_dir() and (stale / _OWNER_FILE).exists() and not _owner_alive(stale):
                log.warning("removing the directory of a run that was killed: %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent_dir))
        (self.path / _OWNER_FILE).write_text(str(os.getpid()))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
