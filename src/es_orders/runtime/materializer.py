"""The materializer: fold the events topic into per-partition stores, exactly once.

A materializer is one fold worker: one member of the consumer group. Its pieces:

- ``assignment``: the partitions it holds, their stores, the restore on assignment;
- per batch, here: read the states the batch needs and the cache lacks (one query per
  partition), fold each record into its order's state (``projection.fold_record``,
  skipping records at or below the row's source offset: a replay), send what cannot
  be decoded to the dead letter topic;
- ``checkpoint``: changelog, then SQLite, then the group's offsets
  (docs/architecture.md, "Exactly-once state without broker transactions"); a crash
  anywhere replays at most the last batch, and the replay changes nothing;
- ``status``: what it holds and how far it got, sent to its service as a
  ``WorkerStatus`` whenever that changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from es_orders.kafka.records import position_of
from es_orders.projection import RecordFolded, Stored, fold_record
from es_orders.runtime.assignment import Assignment
from es_orders.runtime.cache import StateCache
from es_orders.runtime.checkpoint import checkpoint
from es_orders.runtime.clients import Counters, MaterializerConfig, open_clients
from es_orders.runtime.history import HistoryRebuilder, add_upcast
from es_orders.runtime.partition import AssignedPartition, Phase
from es_orders.runtime.replication import ReplicationError, Replicator
from es_orders.runtime.status import PartitionStatus, WorkerStatus
from es_orders.runtime.store import HISTORY_ITEM, HistoryBatch

log = logging.getLogger(__name__)


def _consumer_event(message: Message, error: KafkaError, at_end: list[int]) -> None:
    """An event in the consumer's stream: the end of a partition, or an error."""
    if error.code() == KafkaError._PARTITION_EOF:
        at_end.append(position_of(message)[0])
    elif error.fatal():
        raise ReplicationError(f"fatal consumer error: {error}")
    else:
        log.warning("consumer error=%s", error)


def _keeps(error: KafkaError | None) -> bool:
    """Whether a consumer event outlives its partition: any error but a partition's end."""
    return error is not None and error.code() != KafkaError._PARTITION_EOF


# Records consumed and folded at a time within a batch: all a worker holds of them.
_SLICE = 5_000
# A batch is checkpointed once it changed this many orders, however few records it
# folded: until its checkpoint it holds each changed state, its JSON and the producer's
# copy of it, which is what sets a worker's peak memory on a key space wider than its
# batches (every event a new order). Batches over few orders still collapse up to
# ``max_batch`` records into one row per order.
_MAX_CHANGED = 20_000
# Progress (restore, checkpoints) is told at most this often; changes to what the
# worker holds are told at once.
_STATUS_INTERVAL = 0.2
_PAGE = os.sysconf("SC_PAGE_SIZE")


class _Batch:
    """What a batch folded so far, per partition: new states, last offsets, the partitions
    read to their end, and the records that cannot be folded (for the dead letters)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.records = 0
        self.changed: dict[int, dict[str, Stored]] = {}
        self.last: dict[int, int] = {}
        self.at_end: list[int] = []
        self.dead: list[tuple[Message, str]] = []
        # The events each partition's orders were changed by, when history is kept.
        self.history: dict[int, HistoryBatch] = {}

    @property
    def changed_states(self) -> int:
        return sum(len(states) for states in self.changed.values())

    def keep_only(self, held: dict[int, Any]) -> None:
        """Forget what was folded of partitions that are not ``held`` any more."""
        self.changed = {n: c for n, c in self.changed.items() if n in held}
        self.last = {n: o for n, o in self.last.items() if n in held}
        self.at_end = [n for n in self.at_end if n in held]
        self.dead = [(m, e) for m, e in self.dead if m.partition() in held]
        self.history = {n: h for n, h in self.history.items() if n in held}


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


class FoldObserver(Protocol):
    """Watches a fold from its thread: told of every record folded (a dead letter aside),
    and asked at each checkpoint for records to write with it, which the checkpoint has
    acknowledged before it commits the store. The command service learns from it which of
    its events the log applied, and keeps its Idempotency-Keys."""

    def folded(self, partition: int, offset: int, folded: RecordFolded) -> None: ...

    def checkpointing(self) -> list[tuple[str, bytes, bytes | None]]:
        """Records (topic, key, value) to write with the checkpoint about to be made."""
        ...


_LIBC = ctypes.CDLL(None) if sys.platform == "linux" else None


def _history_phase(part: AssignedPartition) -> str | None:
    if not part.history:
        return None
    return "rebuilding" if part.rebuild is not None and not part.rebuild.done else "complete"


def _release_free_memory() -> None:
    """Give the heap's free pages back to the kernel (glibc ``malloc_trim``)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _rss_bytes() -> tuple[int, int]:
    """This process's resident set size now, and its peak."""
    with open("/proc/self/statm", "rb") as statm:
        resident = int(statm.read().split()[1]) * _PAGE
    return resident, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Materializer:
    """One fold worker: runs on the calling thread (``run``) until its stop flag is set."""

    def __init__(
        self,
        config: MaterializerConfig,
        *,
        publish: Callable[[WorkerStatus], None],
        stop: StopFlag | None = None,
        index: int = 0,
        observer: FoldObserver | None = None,
    ) -> None:
        self.config = config
        self.counters = Counters()
        self.cache = StateCache(config.cache_bytes)
        self._publish = publish
        self._stop: StopFlag = stop if stop is not None else threading.Event()
        self._index = index
        self._observer = observer
        self._consumer: Consumer | None = None
        self._replicator: Replicator | None = None
        self._restorer: Consumer | None = None
        self._assignment: Assignment | None = None
        self._rebuilder: HistoryRebuilder | None = None
        self._told_at = 0.0

    # -- lifecycle -----------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to return (only for a stop flag of its own, a ``threading.Event``)."""
        if isinstance(self._stop, threading.Event):
            self._stop.set()

    def run(self) -> None:
        """Consume, fold, replicate and checkpoint until stopped; then leave the group."""
        clients = open_clients(self.config)
        self._consumer, self._restorer, self._replicator = clients
        if self.config.history:
            self._rebuilder = HistoryRebuilder(self.config.source_topic, self.config.kafka)
        assignment = self._assignment = Assignment(
            self.config,
            clients.restorer,
            self.cache,
            self.counters,
            changed=self._tell,
            cancelled=self._stop.is_set,
            rebuilder=self._rebuilder,
        )
        consumer = clients.consumer
        consumer.subscribe(
            [self.config.source_topic],
            on_assign=assignment.on_assign,
            on_revoke=assignment.on_revoke,
            on_lost=assignment.on_lost,
        )
        log.info(
            "materializer started group=%s topic=%s cache_mb=%.0f",
            self.config.group_id,
            self.config.source_topic,
            self.config.cache_bytes / 2**20,
        )
        self._tell(True)
        last_report = time.monotonic()
        try:
            while not self._stop.is_set():
                first = consumer.poll(0.1)
                if first is not None:
                    self._batch(consumer, first)
                now = time.monotonic()
                if now - self._told_at > 1.0:
                    self._tell(False)  # memory and counters, even when idle
                if now - last_report > 30:
                    log.info("progress %s", self.counters)
                    last_report = now
        finally:
            self._close()

    def _batch(self, consumer: Consumer, first: Message) -> None:
        """Fold what the consumer has ready, up to ``max_batch`` records, then checkpoint.

        Consumed and folded a slice at a time, so that no more than a slice of records is
        held in memory at once, while a checkpoint still covers the whole batch: an order
        changed many times in it is written (to the changelog and the store) once.
        """
        assignment = self._assignment
        assert assignment is not None
        batch = _Batch()
        assignment.released = False
        more = min(_SLICE, self.config.max_batch) - 1  # beyond ``first``
        records = [first, *(consumer.consume(more, timeout=0) if more else [])]
        while True:
            if assignment.released:
                # Partitions taken away by a rebalance callback (``consume`` serves them)
                # are no longer ours: what was folded of them is dropped, and the next
                # owner reads it again from the offset committed on revoke.
                batch.keep_only(assignment.partitions)
                held = assignment.partitions
                records = [m for m in records if m.partition() in held or _keeps(m.error())]
                assignment.released = False
            if not records:
                records = self._linger(consumer, batch)
                # A poll may have run rebalance callbacks: back to the top, which drops
                # what was folded of partitions taken away.
                if not records and not assignment.released:
                    break
                continue
            self._preload(records)
            self._fold(records, batch)
            if batch.records >= self.config.max_batch or batch.changed_states >= _MAX_CHANGED:
                break
            records = consumer.consume(
                min(_SLICE, self.config.max_batch - batch.records), timeout=0
            )
        if batch.last:
            self._checkpoint(batch)
        assignment.reached_end(self._at_end(assignment, batch.at_end), time.monotonic())
        self._tell(False)

    def _linger(self, consumer: Consumer, batch: _Batch) -> list[Message]:
        """With a checkpoint interval, wait for more records while the batch may stay open:
        the next ones the consumer has, or none once the interval is over (or stopping)."""
        interval = self.config.checkpoint_interval
        while not self._stop.is_set():
            left = batch.started + interval - time.monotonic()
            if left <= 0:
                return []
            first = consumer.poll(min(left, 0.1))
            if first is not None:
                more = min(_SLICE, self.config.max_batch - batch.records) - 1
                return [first, *(consumer.consume(more, timeout=0) if more > 0 else [])]
        return []

    def _at_end(self, assignment: Assignment, at_end: list[int]) -> list[int]:
        """The partitions this batch read to their end: those the consumer signalled the
        end of, and those folded up to the end its last fetch reported. librdkafka
        signals an end only when a fetch comes back empty, which under steady writes
        (a record more often than every fetch.wait.max.ms) never happens."""
        ends = list(at_end)
        for number, part in assignment.partitions.items():
            if number in ends or part.consumed is None or part.phase is Phase.RESTORING:
                continue
            end = self._end_offset(number)
            if end is not None and part.consumed >= end:
                ends.append(number)
        return ends

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()  # revokes (committing) and leaves the group
            except Exception:
                log.exception("error while leaving the consumer group")
        if self._replicator is not None:
            self._replicator.close()
        if self._restorer is not None:
            self._restorer.close()
        if self._rebuilder is not None:
            self._rebuilder.close()
        if self._assignment is not None:
            self._assignment.close()
        self._tell(True)
        log.info("materializer stopped %s", self.counters)

    # -- status --------------------------------------------------------------------

    def status(self) -> WorkerStatus:
        """What this worker holds and did, as a value that can be sent anywhere."""
        assignment = self._assignment
        held = assignment.partitions if assignment is not None else {}
        rss, peak = _rss_bytes()
        return WorkerStatus(
            index=self._index,
            pid=os.getpid(),
            joined=assignment is not None and assignment.joined,
            partitions=tuple(
                PartitionStatus(
                    number=p.number,
                    phase=p.phase.value,
                    generation=p.store.generation,
                    assigned_at=p.assigned_at,
                    restored_records=p.restored_records,
                    restore_seconds=p.restore_seconds,
                    consumed=p.consumed,
                    end=self._end_offset(p.number),
                    read_to_end_at=p.read_to_end_at,
                    history=_history_phase(p),
                    history_rebuilt=p.rebuild.reached if p.rebuild is not None else None,
                    history_target=p.rebuild.target if p.rebuild is not None else None,
                )
                for p in sorted(held.values(), key=lambda p: p.number)
            ),
            counters=msgspec.structs.replace(self.counters),
            rss_bytes=rss,
            peak_rss_bytes=peak,
            cache_entries=self.cache.entries,
            cache_bytes=self.cache.bytes,
            cache_limit_bytes=self.cache.limit_bytes,
        )

    def _end_offset(self, number: int) -> int | None:
        """The partition's end from the consumer's last fetch: no request to the broker."""
        if self._consumer is None:
            return None
        try:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.config.source_topic, number), cached=True
            )
        except (KafkaException, RuntimeError):
            return None  # not fetched yet, or the consumer is closed
        return high if high >= 0 else None

    def _tell(self, now: bool) -> None:
        """Send the status: at once when ``now``, else at most every ``_STATUS_INTERVAL``."""
        if now or time.monotonic() - self._told_at >= _STATUS_INTERVAL:
            self._told_at = time.monotonic()
            self._publish(self.status())

    # -- the batch -----------------------------------------------------------------

    def _preload(self, batch: list[Message]) -> None:
        """Read the states this batch needs that the cache lacks: one query a partition."""
        assignment = self._assignment
        assert assignment is not None
        keys: dict[int, set[str]] = {}
        for number, key in {(m.partition(), m.key()) for m in batch}:
            if number is not None:
                wanted = keys.setdefault(number, set())
                if key:
                    wanted.add(key.decode(errors="replace"))
        for number, wanted in keys.items():
            part = assignment.partitions.get(number)
            if part is not None:
                part.preload(wanted)

    def _checkpoint(self, batch: _Batch) -> None:
        assert self._replicator and self._consumer and self._assignment
        for message, error in batch.dead:
            self._replicator.dead_letter(message, error)
        if self._observer is not None:
            for topic, key, value in self._observer.checkpointing():
                self._replicator.extra(topic, key, value)
        started = time.perf_counter()
        done = checkpoint(
            replicator=self._replicator,
            consumer=self._consumer,
            source_topic=self.config.source_topic,
            partitions=self._assignment.partitions,
            cache=self.cache,
            changed=batch.changed,
            last=batch.last,
            history=batch.history,
        )
        counters = self.counters
        counters.checkpoint_seconds += time.perf_counter() - started
        counters.changed += done.rows
        counters.changelog_records += done.rows
        counters.dead_letters += len(batch.dead)
        counters.batches += 1
        counters.last_checkpoint_at = done.at
        if self.cache.shrink():
            _release_free_memory()

    def _fold(self, records: list[Message], batch: _Batch) -> None:  # noqa: PLR0915
        """Fold a slice of records into their orders' states (and the cache). The loop is
        the hot path: per record it does only what the fold needs, counters and lookups
        are hoisted out of it (hence one long function: a call per record costs more)."""
        started = time.time()
        assignment = self._assignment
        assert assignment is not None
        changed, last, at_end, dead = batch.changed, batch.last, batch.at_end, batch.dead
        counters = self.counters
        partitions = assignment.partitions
        consumed = replayed = duplicates = 0
        number, part = -1, None
        observe = self._observer.folded if self._observer is not None else None
        keep_history = self.config.history
        history: HistoryBatch | None = None
        items: dict[str, list[bytes]] = {}
        firsts: dict[str, int] = {}
        lasts: dict[str, int] = {}
        for message in records:
            error = message.error()
            if error is not None:
                _consumer_event(message, error, at_end)
                continue
            offset: int = message.offset()  # type: ignore[assignment,unused-ignore]
            if message.partition() != number or part is None:
                number, _ = position_of(message)
                part = partitions[number]
                # Bound once per run of a partition's records, not once per record.
                stored_of, states = part.stored_of, part.states
                batch_changes = changed.setdefault(number, {})
                if keep_history:
                    history = batch.history.setdefault(number, HistoryBatch())
                    items, firsts, lasts = history.items, history.first, history.last
            last[number] = offset
            consumed += 1
            kind, timestamp = message.timestamp()
            if not kind:
                timestamp = int(started * 1000)
            value = message.value()
            folded = fold_record(message.key(), value, timestamp, offset, stored_of)
            if folded.error is not None:
                # Sent with the checkpoint, and only if the partition is still ours then.
                dead.append((message, str(folded.error)))
                continue
            if observe is not None:
                observe(number, offset, folded)
            replayed += folded.replayed
            duplicates += folded.duplicates
            if folded.gaps:
                counters.gaps += folded.gaps
                log.warning(
                    "version gap applied order=%s partition=%d offset=%d",
                    folded.order_id,
                    number,
                    offset,
                )
            stored = folded.stored
            if stored is not None:
                order_id = stored.state.id
                states[order_id] = stored
                batch_changes[order_id] = stored
                if history is not None:
                    event = folded.event
                    if event is None:  # a legacy record: the events it was upcast into
                        add_upcast(history, folded, offset, timestamp)
                        continue
                    # HistoryBatch.add, inlined: a call per event costs the fold more.
                    version = event.version
                    item = HISTORY_ITEM % (version, offset, timestamp, value)
                    kept = items.get(order_id)
                    if kept is None:
                        items[order_id] = [item]
                        firsts[order_id] = version
                    else:
                        kept.append(item)
                    lasts[order_id] = version
        if consumed and not counters.first_record_at:
            counters.first_record_at = started
        batch.records += len(records)
        counters.consumed += consumed
        counters.replayed += replayed
        counters.duplicates += duplicates
