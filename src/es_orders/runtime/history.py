"""Every order's events, kept beside its state: history and time travel.

The fold writes the events that changed each order with the checkpoint of their batch
(``checkpoint``), so a store's history is exactly as far as its states. The changelog
holds states only, so a store restored from it has states without their past: the
assignment marks from which offset the history is complete (``history_from``), the fold
goes on from there, and a ``HistoryRebuilder`` folds the events topic from its start up
to that offset in the background, on a thread of the fold worker with a consumer of its
own. Latest states are served as soon as the changelog is restored; history requests of
a partition still rebuilding answer 503 (``HistoryRebuildingError``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from es_orders.codec import decode_kept_event, encode_event
from es_orders.domain import OrderState, evolve
from es_orders.errors import EsOrdersError
from es_orders.kafka.records import position_of
from es_orders.projection import RecordFolded, Stored, fold_record
from es_orders.runtime.store import HistoryBatch, HistoryWriter, StoreGoneError

log = logging.getLogger(__name__)

# Records folded between two writes of rebuilt history: one SQLite transaction each, short
# enough that the fold's checkpoint, which waits for it, is not held up for long.
_REBUILD_BATCH = 5_000
_RETRY_AFTER = 5.0


class HistoryRebuildingError(EsOrdersError):
    """The partition's history is being rebuilt: its states are served, its past not yet."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"the history of partition {partition} is being rebuilt")
        self.partition = partition


class HistoryOffError(EsOrdersError):
    """This service keeps no history (ES_ORDERS_HISTORY=off)."""


def add_upcast(history: HistoryBatch, folded: RecordFolded, offset: int, timestamp: int) -> None:
    """Keep what a legacy record changed: the typed events it was upcast into."""
    order_id = folded.order_id
    assert order_id is not None and folded.upcast is not None
    for event in folded.upcast:
        history.add(order_id, event.version, offset, timestamp, encode_event(event))


def add_record(
    history: HistoryBatch, folded: RecordFolded, offset: int, timestamp: int, value: bytes
) -> None:
    """Keep what a record that changed its order changed (the fold's loop inlines it)."""
    if folded.stored is None:
        return
    if folded.event is not None:
        history.add(folded.stored.state.id, folded.event.version, offset, timestamp, value)
    else:
        add_upcast(history, folded, offset, timestamp)


def _stored_before(writer: HistoryWriter, order_id: str, offset: int) -> Stored | None:
    """The order's state from its kept events below ``offset``, with the last one's."""
    if offset <= 0:
        return None
    state: OrderState | None = None
    last = -1
    for _, kept_offset, _, event in writer.events(order_id):
        if kept_offset >= offset:
            break
        state = evolve(state, decode_kept_event(event)).state
        last = kept_offset
    return None if state is None else Stored(state, last)


def state_of(events: list[bytes]) -> OrderState | None:
    """The state the history's events fold into (the events it holds applied, in order)."""
    state: OrderState | None = None
    for raw in events:
        state = evolve(state, decode_kept_event(raw)).state
    return state


@dataclass
class RebuildProgress:
    """How far a partition's history rebuild got; read by the fold thread for its status."""

    start: int  # the offset the rebuild starts from (the history holds all before it)
    target: int  # the offset below which history is rebuilt
    reached: int = 0  # next offset of the events partition to fold
    started: float = 0.0  # time.monotonic()
    done: bool = False


@dataclass(frozen=True)
class _Job:
    partition: int
    path: Path
    generation: int
    progress: RebuildProgress


class HistoryRebuilder:
    """Rebuilds, one partition at a time, what each partition's history lacks (see
    ``Assignment._keep_history``), on a thread of its own until ``close``."""

    def __init__(self, topic: str, kafka: dict[str, Any]) -> None:
        # No callback to the fold thread: its status is sent from that thread alone (at
        # least every second, with the progress read from ``RebuildProgress``).
        self._topic = topic
        self._kafka = kafka
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def rebuild(
        self, partition: int, path: Path, generation: int, start: int, target: int
    ) -> RebuildProgress:
        """Rebuild the history of the partition's events from ``start`` to below
        ``target`` (the history holds every event before ``start``)."""
        progress = RebuildProgress(start=start, target=target, reached=start)
        with self._lock:
            self._cancelled.discard(partition)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="history-rebuild", daemon=True
                )
                self._thread.start()
        self._jobs.put(_Job(partition, path, generation, progress))
        log.info(
            "history of partition %d to be rebuilt from offset %d to %d path=%s",
            partition,
            start,
            target,
            path,
        )
        return progress

    def cancel(self, partition: int) -> None:
        """Stop rebuilding the partition (revoked): the next holder rebuilds its own."""
        with self._lock:
            self._cancelled.add(partition)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout=10)

    def _is_cancelled(self, partition: int) -> bool:
        with self._lock:
            return partition in self._cancelled or self._thread is None

    def _run(self) -> None:
        consumer = Consumer(
            {
                "fetch.wait.max.ms": 10,
                **self._kafka,
                "group.id": f"history-rebuild-{self._topic}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                try:
                    self._rebuild(consumer, job)
                except StoreGoneError as exc:
                    # Its file was replaced (a new generation, with a rebuild of its own).
                    log.info("history rebuild of partition %d dropped: %s", job.partition, exc)
                except Exception:
                    # Its partition stays "rebuilding" (history requests 503) and is tried
                    # again: a broker away for a while is no reason to give up for good.
                    log.exception(
                        "history rebuild of partition %d failed; trying again in %.0f s",
                        job.partition,
                        _RETRY_AFTER,
                    )
                    threading.Timer(_RETRY_AFTER, self._retry, (job,)).start()
                finally:
                    consumer.unassign()
        finally:
            consumer.close()

    def _retry(self, job: _Job) -> None:
        if not self._is_cancelled(job.partition):
            self._jobs.put(job)

    def _rebuild(self, consumer: Consumer, job: _Job) -> None:
        progress = job.progress
        progress.started = time.monotonic()
        writer = HistoryWriter(job.path, job.generation)
        try:
            first = progress.start if progress.start > 0 else OFFSET_BEGINNING
            consumer.assign([TopicPartition(self._topic, job.partition, first)])
            states: dict[str, Stored | None] = {}

            def stored_of(order_id: str) -> Stored | None:
                # From after the start of the partition, an order's state before the
                # first of its records the rebuild meets is the fold of its history.
                if order_id not in states:
                    states[order_id] = _stored_before(writer, order_id, progress.start)
                return states[order_id]

            rows = HistoryBatch()
            last_log = time.monotonic()
            while progress.reached < progress.target:
                if self._is_cancelled(job.partition):
                    log.info("history rebuild of partition %d stopped", job.partition)
                    return
                at_end = False
                for message in consumer.consume(_REBUILD_BATCH, timeout=0.2):
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            at_end = True
                        else:
                            log.warning("history rebuild fetch error=%s", error)
                        continue
                    _, offset = position_of(message)
                    if offset >= progress.target:
                        at_end = True
                        break
                    kind, timestamp = message.timestamp()
                    if not kind:
                        timestamp = int(time.time() * 1000)
                    value = message.value()
                    folded = fold_record(message.key(), value, timestamp, offset, stored_of)
                    if folded.stored is not None:
                        states[folded.stored.state.id] = folded.stored
                        add_record(rows, folded, offset, timestamp, value)
                    progress.reached = offset + 1
                if at_end:
                    # The records below the target that retention deleted are gone for
                    # good: the history starts with the oldest one the log still has.
                    progress.reached = progress.target
                writer.add(rows, progress.reached)
                rows = HistoryBatch()
                if time.monotonic() - last_log > 5:
                    log.info(
                        "rebuilding history partition=%d offset=%d of %d",
                        job.partition,
                        progress.reached,
                        progress.target,
                    )
                    last_log = time.monotonic()
            progress.done = True
            log.info(
                "history of partition %d rebuilt from offset %d to %d orders=%d seconds=%.2f",
                job.partition,
                progress.start,
                progress.target,
                len(states),
                time.monotonic() - progress.started,
            )
        finally:
            writer.close()
