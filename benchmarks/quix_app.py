"""The quixstreams baseline: fold the events topic into per-order ``State``, at least once.

Run by the bench as ``python -m benchmarks.quix_app``. It decodes and folds with the
same codec and ``evolve`` as es-orders, and stores each order's state through RocksDB
serializers that are our codec too, so the comparison is of the two runtimes, not of two
JSON libraries. Its progress goes to a small JSON status file (replaced atomically
every 100 ms) that the bench polls: messages processed, wall-clock times of the first
and the last, when changelog recovery began and ended, and when the sentinels (records
whose key starts with ``bench-sentinel``, one per partition) were processed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from quixstreams import Application
from quixstreams.state.rocksdb import RocksDBOptions

from benchmarks.topics import SENTINEL_PREFIX
from es_orders.codec import (
    CodecError,
    LegacyUpdate,
    decode_record,
    decode_state,
    encode_state,
    upcast,
)
from es_orders.domain import OrderState, Outcome, evolve

# Informative only: the bench times phases from when it spawned the process.
_STARTED_AT = time.time()

_ORDER = "order"
_STATUS_EVERY = 0.1


class Progress:
    """Counters of this process, written to the status file by a background thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.fields: dict[str, Any] = {
            "pid": os.getpid(),
            "started_at": _STARTED_AT,
            "processed": 0,
            "first_at": 0.0,
            "last_at": 0.0,
            "dead_letters": 0,
            "duplicates": 0,
            "sentinels": 0,
            "sentinel_at": 0.0,
            "recovery_started_at": 0.0,
            "recovery_completed_at": 0.0,
        }
        self._processed = 0
        self._first_at = 0.0
        self._last_at = 0.0
        self._stop = threading.Event()
        # The fold thread (marks) and the writer thread share one temporary file.
        self._write_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name="status", daemon=True)

    def on_processed(self, _topic: str, _partition: int, _offset: int) -> None:
        # The hot path of the baseline: two attribute writes and a clock read per message.
        now = time.time()
        if not self._processed:
            self._first_at = now
        self._processed += 1
        self._last_at = now

    def mark(self, name: str) -> None:
        self.fields[name] = time.time()
        self.write()

    def start(self) -> None:
        self.write()
        self._writer.start()

    def stop(self) -> None:
        self._stop.set()
        self._writer.join(timeout=2)
        self.write()

    def _write_loop(self) -> None:
        written = -1
        while not self._stop.wait(_STATUS_EVERY):
            if self._processed != written:
                written = self._processed
                self.write()

    def write(self) -> None:
        with self._write_lock:
            self.fields.update(
                processed=self._processed, first_at=self._first_at, last_at=self._last_at
            )
            temporary = self._path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.fields))
            os.replace(temporary, self._path)  # the bench never reads half a file


class _RecoveryTimes(logging.Handler):
    """quixstreams tells when recovery starts and ends only in its log: listen to it."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self._progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Beginning recovery check"):
            self._progress.mark("recovery_started_at")
        elif message.startswith("Recovery process complete"):
            self._progress.mark("recovery_completed_at")


def make_fold(progress: Progress) -> Any:
    def fold(value: bytes, key: bytes, timestamp: int, _headers: Any, state: Any) -> None:
        try:
            decoded = decode_record(key, value, timestamp)
        except CodecError:
            progress.fields["dead_letters"] += 1
            return
        before: OrderState | None = state.get(_ORDER)
        after = before
        events = upcast(decoded, before) if isinstance(decoded, LegacyUpdate) else (decoded,)
        for event in events:
            evolved = evolve(after, event)
            if evolved.outcome is Outcome.DUPLICATE:
                progress.fields["duplicates"] += 1
                continue
            after = evolved.state
        if after is not before:
            state.set(_ORDER, after)
        if key.startswith(SENTINEL_PREFIX):
            progress.fields["sentinels"] += 1
            progress.mark("sentinel_at")

    return fold


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--status", required=True, type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    progress = Progress(args.status)
    logging.getLogger("quixstreams.state.recovery").addHandler(_RecoveryTimes(progress))
    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        state_dir=args.state_dir,
        # Topics (and the changelog) are created by the bench with explicit configs.
        auto_create_topics=False,
        # As es-orders' consumers have by default: Tansu's first group join
        # takes session.timeout.ms / 2, about 23 s with the librdkafka default.
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
        rocksdb_options=RocksDBOptions(dumps=encode_state, loads=decode_state),
        on_message_processed=progress.on_processed,
    )
    topic = app.topic(args.topic, key_deserializer="bytes", value_deserializer="bytes")
    dataframe = app.dataframe(topic)
    dataframe.update(make_fold(progress), stateful=True, metadata=True)
    progress.start()
    try:
        app.run()  # until SIGTERM, which quixstreams turns into a clean stop and commit
    finally:
        progress.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
