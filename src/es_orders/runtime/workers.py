"""Fold workers as processes of their own, so that reads never wait for a fold.

The query service's process serves HTTP and reads the stores; each of its ``--workers``
fold workers is a child process running a ``Materializer``, one member of the consumer
group each (as Kafka Streams' stream threads are), which owns the stores of the
partitions it is assigned. A worker tells the service what it holds through a pipe: a
stream of ``WorkerStatus`` values (``runtime.status``), each framed by its length. That
pipe is the only thing the two share.

``FoldWorkers`` starts them, reads their statuses into the ``StatusBoard``, replaces one
that exits unexpectedly (its partitions go to the others meanwhile, as the group
rebalances), and stops them all with SIGTERM: each leaves the group and checkpoints.
A worker that keeps dying makes the service fail rather than spin.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import selectors
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from es_orders.errors import EsOrdersError
from es_orders.processes import spawn, stop_requested
from es_orders.runtime.clients import MaterializerConfig
from es_orders.runtime.materializer import Materializer
from es_orders.runtime.status import StatusBoard, WorkerStatus, decode_status, encode_status

log = logging.getLogger(__name__)

_CONFIG_ENV = "ES_ORDERS_WORKER_CONFIG"
_FRAME = struct.Struct(">I")
# A worker that exits more often than this within the window is not replaced again:
# the service stops, with the reason in its log.
_MAX_RESTARTS = 5
_RESTART_WINDOW = 60.0
_RESTART_DELAY = 1.0
_WORKER_NICENESS = 10


class WorkerFailedError(EsOrdersError):
    """Fold workers keep exiting: something is wrong that a restart does not cure."""


def _encode_config(config: MaterializerConfig) -> str:
    fields = dataclasses.asdict(config)
    fields["state_dir"] = str(config.state_dir)
    return json.dumps(fields)


def _decode_config(text: str) -> MaterializerConfig:
    fields: dict[str, Any] = json.loads(text)
    fields["state_dir"] = Path(fields["state_dir"])
    return MaterializerConfig(**fields)


@dataclasses.dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    fd: int
    buffer: bytearray = dataclasses.field(default_factory=bytearray)


class FoldWorkers:
    """A ``serving.Worker`` that runs ``count`` fold worker processes until ``stop``."""

    def __init__(
        self,
        config: MaterializerConfig,
        board: StatusBoard,
        count: int,
        *,
        stop_timeout: float = 6.0,
    ) -> None:
        self._config = config
        self._board = board
        self._count = count
        self._stop_timeout = stop_timeout
        self._stopping = threading.Event()
        self._children: dict[int, _Child] = {}
        self._exits: deque[float] = deque()
        self._due: dict[int, float] = {}  # index -> when to start its replacement
        self._selector = selectors.DefaultSelector()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            for index in range(self._count):
                self._start(index)
            while not self._stopping.is_set():
                for key, _ in self._selector.select(timeout=0.2):
                    self._read(key.data)
                now = time.monotonic()
                for index, at in list(self._due.items()):
                    if now >= at and not self._stopping.is_set():
                        del self._due[index]
                        self._start(index)
        finally:
            self._stop_all()

    def _start(self, index: int) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, _CONFIG_ENV: _encode_config(self._config)}
        argv = [
            sys.executable,
            "-m",
            "es_orders.runtime.workers",
            str(index),
            str(write_fd),
            logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        ]
        try:
            process = spawn(
                argv,
                log_path=None,
                env=env,
                name=f"fold worker {index}",
                inherit_output=True,
                pass_fds=(write_fd,),
            )
        finally:
            os.close(write_fd)  # the child has its own; EOF on read_fd means it is gone
        child = self._children[index] = _Child(index, process, read_fd)
        self._selector.register(read_fd, selectors.EVENT_READ, child)
        self._board.started(index, process.pid)
        log.info("fold worker started index=%d pid=%d", index, process.pid)

    def _read(self, child: _Child) -> bool:
        """Take in what the child sent; False once its pipe is closed (it exited)."""
        data = os.read(child.fd, 1 << 16)
        if data:
            child.buffer += data
            self._take_frames(child)
            return True
        self._gone(child)
        return False

    def _take_frames(self, child: _Child) -> None:
        """Hand every whole status in the child's buffer to the board, in order."""
        while len(child.buffer) >= _FRAME.size:
            (size,) = _FRAME.unpack_from(child.buffer)
            if len(child.buffer) < _FRAME.size + size:
                return
            frame = bytes(child.buffer[_FRAME.size : _FRAME.size + size])
            del child.buffer[: _FRAME.size + size]
            self._board.update(decode_status(frame))

    def _gone(self, child: _Child) -> None:
        self._selector.unregister(child.fd)
        os.close(child.fd)
        del self._children[child.index]
        try:
            code = child.process.wait(timeout=self._stop_timeout)
        except subprocess.TimeoutExpired:
            child.process.kill()
            code = child.process.wait()
        self._board.exited(child.index)
        if self._stopping.is_set():
            log.info("fold worker stopped index=%d code=%d", child.index, code)
            return
        now = time.monotonic()
        self._exits.append(now)
        while self._exits and self._exits[0] < now - _RESTART_WINDOW:
            self._exits.popleft()
        if len(self._exits) > _MAX_RESTARTS:
            raise WorkerFailedError(
                f"fold workers exited {len(self._exits)} times within {_RESTART_WINDOW:.0f} s "
                f"(the last, worker {child.index}, with code {code}): see the log above"
            )
        log.error(
            "fold worker exited unexpectedly index=%d pid=%d code=%d; replacing it in %.0f s "
            "(its partitions go to the other members of the group meanwhile)",
            child.index,
            child.process.pid,
            code,
            _RESTART_DELAY,
        )
        self._due[child.index] = now + _RESTART_DELAY

    def _stop_all(self) -> None:
        """SIGTERM every worker, read what they still say, SIGKILL what is left."""
        self._stopping.set()
        self._due.clear()
        for child in self._children.values():
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + self._stop_timeout
        while self._children and time.monotonic() < deadline:
            for key, _ in self._selector.select(timeout=0.1):
                self._read(key.data)
        for child in list(self._children.values()):
            log.warning("fold worker did not stop in time, killing pid=%d", child.process.pid)
            child.process.kill()
            self._gone(child)
        self._selector.close()


def _write_frames(fd: int) -> Callable[[WorkerStatus], None]:
    def publish(status: WorkerStatus) -> None:
        payload = encode_status(status)
        frame = memoryview(_FRAME.pack(len(payload)) + payload)
        while frame:
            frame = frame[os.write(fd, frame) :]

    return publish


def worker_main(argv: list[str]) -> int:
    """A fold worker process: ``python -m es_orders.runtime.workers INDEX FD LEVEL``."""
    index, fd, level = int(argv[0]), int(argv[1]), argv[2]
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)-7s %(name)s worker={index} %(message)s",
    )
    config = _decode_config(os.environ[_CONFIG_ENV])
    # Folding is throughput work, reads are latency work: on a busy machine the kernel
    # runs the service's HTTP process first, and a worker takes whatever is left.
    os.nice(_WORKER_NICENESS)
    with stop_requested() as requested:
        Materializer(config, publish=_write_frames(fd), stop=requested, index=index).run()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
