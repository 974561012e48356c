"""The materializer: fold the events topic into per-partition stores, exactly once.

Per batch (docs/architecture.md, "Exactly-once state without broker transactions"):

1. fold each record into the state of its order (``projection.fold_record``), skipping
   records at or below the row's source offset (a replay);
2. produce one changelog record per changed order (same partition, ``source-offset``
   header) and each undecodable record to the dead letter topic, then flush: nothing is
   checkpointed before the broker acknowledged all of it;
3. checkpoint each partition's rows and consumed position in one SQLite transaction;
4. only then commit the consumer group offsets.

A crash anywhere replays at most the last batch, and the replay changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    TopicPartition,
)

from es_orders.codec import encode_state
from es_orders.kafka.records import position_of
from es_orders.projection import Stored, fold_record
from es_orders.runtime.clients import Counters, MaterializerConfig, open_clients
from es_orders.runtime.origin import current_origin, differences
from es_orders.runtime.partition import AssignedPartition, Phase, store_path
from es_orders.runtime.replication import ReplicationError, Replicator
from es_orders.runtime.restore import LocalStoreAheadError, restore_partitions
from es_orders.runtime.store import Row
from es_orders.runtime.views import Readiness

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


_SLICE = 2_000


class Materializer:
    """Runs the fold loop on the calling thread (``run``) until ``stop`` is called."""

    def __init__(self, config: MaterializerConfig) -> None:
        self.config = config
        self.counters = Counters()
        self._stop = threading.Event()
        self._partitions: dict[int, AssignedPartition] = {}
        # Replaced, never mutated, so HTTP threads can iterate a snapshot without a lock.
        self.readable: dict[int, AssignedPartition] = {}
        self._assigned_once = False
        # time.monotonic() of the last time each partition was read to its end.
        self.caught_up_at: dict[int, float] = {}
        self._consumer: Consumer | None = None
        self._replicator: Replicator | None = None
        self._restorer: Consumer | None = None
        # Set when a rebalance callback takes partitions away; ``consume`` serves them, so
        # it can happen halfway through gathering a batch.
        self._released = False

    # -- lifecycle -----------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Consume, fold, replicate and checkpoint until ``stop``; then leave the group."""
        clients = open_clients(self.config)
        self._consumer, self._restorer, self._replicator = clients
        consumer = clients.consumer
        consumer.subscribe(
            [self.config.source_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "materializer started group=%s topic=%s", self.config.group_id, self.config.source_topic
        )
        last_report = time.monotonic()
        try:
            while not self._stop.is_set():
                first = consumer.poll(0.1)
                if first is not None:
                    self._process(self._gather(consumer, first))
                if time.monotonic() - last_report > 30:
                    log.info("progress %s", self.counters)
                    last_report = time.monotonic()
        finally:
            self._close()

    def _gather(self, consumer: Consumer, first: Message) -> list[Message]:
        """The batch: what the consumer has ready, up to ``max_batch`` records.

        Taken in small slices: building Message objects holds the GIL, and one call for
        50,000 would keep HTTP threads waiting for tens of milliseconds.
        """
        self._released = False
        batch = [first]
        while len(batch) < self.config.max_batch:
            more = consumer.consume(min(_SLICE, self.config.max_batch - len(batch)), timeout=0)
            if not more:
                break
            batch += more
        if self._released:
            # Records of partitions taken away meanwhile are no longer ours to fold: the
            # next owner reads them again from the offset committed on revoke.
            held = self._partitions
            batch = [m for m in batch if m.partition() in held or _keeps(m.error())]
        return batch

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
        for part in self._partitions.values():
            part.close()
        self._partitions = {}
        self.readable = {}
        log.info("materializer stopped %s", self.counters)

    # -- rebalance -----------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info(
            "partitions assigned topic=%s partitions=%s",
            self.config.source_topic,
            [tp.partition for tp in partitions],
        )
        origin = (
            current_origin(
                self.config.kafka, [self.config.source_topic, self.config.changelog_topic]
            )
            if partitions
            else {}
        )
        for tp in partitions:
            path = store_path(
                self.config.state_dir, self.config.group_id, self.config.source_topic, tp.partition
            )
            # Registered before the restore so that readiness shows its progress.
            part = self._partitions[tp.partition] = AssignedPartition(tp.partition, path)
            self._check_origin(part, origin)
        self._restore([tp.partition for tp in partitions])
        committed = consumer.committed(partitions, timeout=30) if partitions else []
        for tp, group_offset in zip(partitions, committed, strict=True):
            part = self._partitions[tp.partition]
            local = part.store.position().consumed
            # The store is never behind the group (invariant 2); after a rebalance another
            # instance may have moved the group ahead, and restore brought the store there.
            start = max(local if local is not None else -1, group_offset.offset)
            tp.offset = start if start >= 0 else OFFSET_BEGINNING
            part.consumed = start if start >= 0 else None
            part.phase = Phase.CATCHING_UP
            log.info(
                "partition ready to fold partition=%d from_offset=%s orders=%d",
                tp.partition,
                start if start >= 0 else "beginning",
                part.store.count(),
            )
        self.readable = dict(self._partitions)
        self._assigned_once = True
        consumer.assign(partitions)

    def _check_origin(self, part: AssignedPartition, origin: dict[str, str]) -> None:
        """Discard a store whose positions belong to another cluster or topic; stamp it."""
        conflicts = differences(part.store.origin(), origin)
        if conflicts:
            log.warning(
                "discarding the local store of partition %d: it belongs to another history "
                "of the topics (%s); rebuilding it from the changelog path=%s",
                part.number,
                "; ".join(conflicts),
                part.path,
            )
            part.wipe()
        if origin:
            part.store.set_origin({**part.store.origin(), **origin})

    def _restore(self, numbers: list[int]) -> None:
        assert self._restorer is not None
        parts = {n: self._partitions[n] for n in numbers}

        def progress(number: int, records: int) -> None:
            parts[number].restored_records = records

        while parts:
            try:
                restored = restore_partitions(
                    self._restorer,
                    self.config.changelog_topic,
                    {n: p.store for n, p in parts.items()},
                    progress,
                )
            except LocalStoreAheadError as exc:
                part = parts[exc.partition]
                log.warning(
                    "local store is ahead of the changelog (%s): rebuilding it from "
                    "the changelog's start path=%s",
                    exc,
                    part.path,
                )
                part.wipe()
                continue
            for result in restored:
                self.counters.restored_records += result.records
                log.info(
                    "partition restored partition=%d records=%d seconds=%.2f",
                    result.partition,
                    result.records,
                    result.seconds,
                )
            return

    def _release(self, partitions: list[TopicPartition]) -> None:
        self._released = True
        for tp in partitions:
            # A partition held again later is caught up only once it reads to its end again.
            self.caught_up_at.pop(tp.partition, None)
            part = self._partitions.pop(tp.partition, None)
            if part is not None:
                part.close()
        self.readable = dict(self._partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions revoked partitions=%s", [tp.partition for tp in partitions])
        offsets = [
            TopicPartition(self.config.source_topic, tp.partition, part.consumed)
            for tp in partitions
            if (part := self._partitions.get(tp.partition)) is not None
            and part.consumed is not None
        ]
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except Exception as exc:  # the checkpoint is local; the group may lag (harmless)
                log.warning("offset commit on revoke failed error=%s", exc)
        self._release(partitions)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost partitions=%s", [tp.partition for tp in partitions])
        self._release(partitions)

    # -- readiness -----------------------------------------------------------------

    def readiness(self) -> Readiness:
        partitions = dict(self._partitions)
        states = {
            n: f"{p.phase.value} ({p.restored_records} restored)"
            for n, p in sorted(partitions.items())
        }
        waiting = [
            f"partition {n}: {p.phase.value}"
            for n, p in sorted(partitions.items())
            if p.phase is not Phase.CAUGHT_UP
        ]
        if not self._assigned_once:
            waiting.insert(0, "group join and partition assignment")
        elif not partitions:
            # Lost with the group (the broker is gone, or the session expired) or revoked:
            # an instance that holds nothing cannot answer for any order.
            waiting.insert(0, "partitions: none held (revoked, or lost with the group)")
        return Readiness(ready=not waiting, waiting_for=tuple(waiting), partitions=states)

    # -- the batch -----------------------------------------------------------------

    def _process(self, batch: list[Message]) -> None:
        """Fold a batch, replicate and checkpoint it. The loop is the hot path: per record
        it does only what the fold needs, counters and lookups are hoisted out of it."""
        started = time.time()
        replicator, consumer = self._replicator, self._consumer
        assert replicator is not None and consumer is not None
        changed: dict[str, tuple[int, Stored]] = {}
        last: dict[int, int] = {}
        at_end: list[int] = []
        counters = self.counters
        partitions = self._partitions
        consumed = dead = replayed = duplicates = 0
        number, part = -1, None
        for message in batch:
            error = message.error()
            if error is not None:
                _consumer_event(message, error, at_end)
                continue
            offset: int = message.offset()  # type: ignore[assignment,unused-ignore]
            if message.partition() != number or part is None:
                number, _ = position_of(message)
                part = partitions[number]
                # Bound once per run of a partition's records, not once per record.
                stored_of, remember = part.stored_of, part.remember
            last[number] = offset
            consumed += 1
            kind, timestamp = message.timestamp()
            folded = fold_record(
                message.key(),
                message.value(),
                timestamp if kind else int(started * 1000),
                offset,
                stored_of,
            )
            if folded.error is not None:
                replicator.dead_letter(message, str(folded.error))
                dead += 1
                continue
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
                remember(order_id, stored)
                changed[order_id] = (number, stored)
        if last:
            if not counters.first_record_at:
                counters.first_record_at = started
            self._checkpoint(replicator, consumer, changed, last)
        counters.consumed += consumed
        counters.dead_letters += dead
        counters.replayed += replayed
        counters.duplicates += duplicates
        self._reached_end(at_end)

    def _reached_end(self, numbers: list[int]) -> None:
        """Partitions read to their end in this batch, which is checkpointed by now."""
        now = time.monotonic()
        for number in numbers:
            self.caught_up_at[number] = now
            part = self._partitions[number]
            if part.phase is not Phase.CAUGHT_UP:
                part.phase = Phase.CAUGHT_UP
                log.info("partition caught up partition=%d orders=%d", number, part.store.count())

    def _checkpoint(
        self,
        replicator: Replicator,
        consumer: Consumer,
        changed: dict[str, tuple[int, Stored]],
        last: dict[int, int],
    ) -> None:
        # One changelog record and one row per changed order, however often it changed.
        rows: dict[int, list[Row]] = {number: [] for number in last}
        for order_id, (number, stored) in changed.items():
            rows[number].append((order_id, encode_state(stored.state), stored.source_offset))
        for number, part_rows in rows.items():
            replicator.changelog(number, part_rows)
        changelog_next = replicator.flush()
        for number, offset in last.items():
            part = self._partitions[number]
            part.store.checkpoint(rows[number], offset + 1, changelog_next.get(number))
            part.consumed = offset + 1
        written = sum(len(r) for r in rows.values())
        self.counters.changed += written
        self.counters.changelog_records += written
        self.counters.batches += 1
        self.counters.last_checkpoint_at = time.time()
        consumer.commit(
            offsets=[TopicPartition(self.config.source_topic, n, o + 1) for n, o in last.items()],
            asynchronous=True,
        )
