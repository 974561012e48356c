"""Stop signals and run directories (es_orders.processes)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from es_orders.processes import RunDirectory, spawn, stop, stop_requested


def test_sigterm_sets_the_stop_flag_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="es_orders.processes")
    previous = signal.getsignal(signal.SIGTERM)
    with stop_requested() as stopping:
        assert not stopping.wait(0.01)
        for _ in range(3):  # a burst, as `es-orders up` and impatient users send
            os.kill(os.getpid(), signal.SIGTERM)
        assert stopping.wait(1.0)
        assert stopping.is_set()
    assert signal.getsignal(signal.SIGTERM) == previous, "the previous handler is back"
    assert [r.getMessage() for r in caplog.records] == ["stopping signal=SIGTERM"]


def test_a_run_directory_left_by_a_dead_owner_is_removed_by_the_next_run(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    stale = tmp_path / "es-orders-run-stale"
    stale.mkdir()
    (stale / "owner.pid").write_text(dead.stdout.strip())
    alive = tmp_path / "es-orders-run-alive"
    alive.mkdir()
    (alive / "owner.pid").write_text(str(os.getpid()))
    foreign = tmp_path / "es-orders-run-foreign"  # not made by RunDirectory: no owner file
    foreign.mkdir()

    run = RunDirectory("es-orders-run-", tmp_path)

    assert not stale.exists()
    assert alive.exists() and foreign.exists()
    assert (run.path / "owner.pid").read_text() == str(os.getpid())
    run.remove()
    assert not run.path.exists()


def test_a_spawned_child_gets_sigterm_when_its_parent_dies(tmp_path: Path) -> None:
    """The parent is a Python process that spawns ``sleep`` and is then SIGKILLed."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from es_orders.processes import spawn; "
            f"child = spawn(['sleep', '60'], log_path=Path({str(tmp_path / 'child.log')!r})); "
            f"Path({str(pid_file)!r}).write_text(str(child.pid)); time.sleep(60)",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _exists(child):
            assert time.monotonic() < deadline, "the child outlived its SIGKILLed parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by its new parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stop_ends_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    stubborn += "print('ready', flush=True); time.sleep(60)"
    child = spawn(
        [sys.executable, "-c", stubborn],
        log_path=tmp_path / "child.log",
    )
    deadline = time.monotonic() + 10
    while "ready" not in (tmp_path / "child.log").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started = time.monotonic()
    assert stop(child, "stubborn", timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5
