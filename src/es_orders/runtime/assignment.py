"""The partitions a fold worker holds, from assignment to revocation.

On assignment (the consumer group's rebalance callback), per partition:

1. open its store, and discard it if it belongs to another history of the topics
   (``origin``: another cluster, or a topic deleted and created again);
2. restore it from the changelog, from where the store stands to the changelog's end
   (``restore``); a stop request cancels the restore, which resumes on the next start;
3. start folding from the store's consumed position, or the group's if that is ahead.

On revocation the consumed positions are committed and the partitions closed; on loss
(the session expired) they are only closed. Either way the worker's status says so
before the callback returns, so no other worker can be folding the partition while
this one still claims it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from es_orders.runtime.cache import StateCache
from es_orders.runtime.clients import Counters, MaterializerConfig
from es_orders.runtime.history import HistoryRebuilder
from es_orders.runtime.origin import current_origin, differences
from es_orders.runtime.partition import AssignedPartition, Phase, store_path
from es_orders.runtime.restore import (
    LocalStoreAheadError,
    RestoreCancelledError,
    restore_partitions,
)
from es_orders.runtime.store import HistoryMarks

log = logging.getLogger(__name__)


class Assignment:
    """What this worker holds, kept by the fold loop's thread (rebalance callbacks run on
    it too, inside ``poll`` and ``consume``)."""

    def __init__(
        self,
        config: MaterializerConfig,
        restorer: Consumer,
        cache: StateCache,
        counters: Counters,
        *,
        changed: Callable[[bool], None],
        cancelled: Callable[[], bool],
        rebuilder: HistoryRebuilder | None = None,
    ) -> None:
        self._config = config
        self._restorer = restorer
        self._cache = cache
        self._counters = counters
        # Called when what the worker holds changed (True: say so now, it matters to
        # others) or made progress (False: may be throttled).
        self._changed = changed
        self._cancelled = cancelled
        self._rebuilder = rebuilder
        self.partitions: dict[int, AssignedPartition] = {}
        self.joined = False
        # Set when a callback takes partitions away; ``consume`` serves callbacks, so it
        # can happen halfway through gathering a batch.
        self.released = False

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info(
            "partitions assigned topic=%s partitions=%s",
            self._config.source_topic,
            [tp.partition for tp in partitions],
        )
        self.joined = True
        topics = [self._config.source_topic, self._config.changelog_topic]
        origin = current_origin(self._config.kafka, topics) if partitions else {}
        for tp in partitions:
            path = store_path(
                self._config.state_dir,
                self._config.group_id,
                self._config.source_topic,
                tp.partition,
            )
            # Registered (and announced) before the restore so that readiness shows it.
            part = AssignedPartition(tp.partition, path, self._cache)
            self.partitions[tp.partition] = part
            self._check_origin(part, origin)
        self._changed(True)
        try:
            self._restore([tp.partition for tp in partitions])
        except RestoreCancelledError as exc:
            log.info("stopping during the restore: %s", exc)
            return
        committed = consumer.committed(partitions, timeout=30) if partitions else []
        for tp, group_offset in zip(partitions, committed, strict=True):
            part = self.partitions[tp.partition]
            local = part.store.position().consumed
            # The store is never behind the group (invariant 2); after a rebalance another
            # instance may have moved the group ahead, and restore brought the store there.
            start = max(local if local is not None else -1, group_offset.offset)
            tp.offset = start if start >= 0 else OFFSET_BEGINNING
            part.consumed = start if start >= 0 else None
            if self._config.history:
                self._keep_history(part, local, start)
            else:
                part.store.set_history_marks(None)  # what it kept has holes from now on
            part.phase = Phase.CATCHING_UP
            log.info(
                "partition ready to fold partition=%d from_offset=%s orders=%d",
                tp.partition,
                start if start >= 0 else "beginning",
                part.store.count(),
            )
        consumer.assign(partitions)
        self._changed(True)

    def _keep_history(self, part: AssignedPartition, local: int | None, start: int) -> None:
        """Record what the partition's history will hold, and rebuild what it lacks.

        The fold keeps the events of every record from ``start`` on, except of those a
        restored row is already past (they count as replays): so every event from past
        both on. The history already held every event up to its ``prefix``: a hole
        between the two (a restore from the changelog, a crash between the changelog and
        the store, another instance folding meanwhile) is rebuilt from the events topic,
        from the end of that prefix, not from the start.
        """
        store = part.store
        marks = store.history_marks()
        since = max(start, part.restored_newest + 1, 0)
        if marks is None:
            # Never kept, or not while history was off: whatever is left has holes.
            marks = HistoryMarks(rebuilt=0, since=since)
            store.set_history_marks(marks, clear=True)
        else:
            prefix = marks.rebuilt
            if marks.complete:
                prefix = max(prefix, marks.since if local is None else local)
            marks = HistoryMarks(rebuilt=min(prefix, since), since=since)
            store.set_history_marks(marks)
        part.history = True
        if not marks.complete and self._rebuilder is not None:
            part.rebuild = self._rebuilder.rebuild(
                part.number, part.path, store.generation, marks.rebuilt, marks.since
            )

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
        parts = {n: self.partitions[n] for n in numbers}

        def progress(number: int, records: int) -> None:
            parts[number].restored_records = records
            self._changed(False)

        while parts:
            try:
                restored = restore_partitions(
                    self._restorer,
                    self._config.changelog_topic,
                    {n: p.store for n, p in parts.items()},
                    progress,
                    self._cancelled,
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
                self._changed(True)  # a new store file: a new generation
                continue
            for result in restored:
                self._counters.restored_records += result.records
                parts[result.partition].restore_seconds = result.seconds
                parts[result.partition].restored_newest = result.newest_source
                log.info(
                    "partition restored partition=%d records=%d seconds=%.2f",
                    result.partition,
                    result.records,
                    result.seconds,
                )
            return

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions revoked partitions=%s", [tp.partition for tp in partitions])
        offsets = [
            TopicPartition(self._config.source_topic, tp.partition, part.consumed)
            for tp in partitions
            if (part := self.partitions.get(tp.partition)) is not None and part.consumed is not None
        ]
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except Exception as exc:  # the checkpoint is local; the group may lag (harmless)
                log.warning("offset commit on revoke failed error=%s", exc)
        self._release(partitions)

    def on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost partitions=%s", [tp.partition for tp in partitions])
        self._release(partitions)

    def _release(self, partitions: list[TopicPartition]) -> None:
        self.released = True
        for tp in partitions:
            part = self.partitions.pop(tp.partition, None)
            if part is not None:
                if self._rebuilder is not None and part.rebuild is not None:
                    self._rebuilder.cancel(part.number)
                part.close()
        self._changed(True)

    def reached_end(self, numbers: list[int], now: float) -> None:
        """Partitions read to their end in a batch that is checkpointed by now."""
        for number in numbers:
            part = self.partitions[number]
            part.read_to_end_at = now
            if part.phase is not Phase.CAUGHT_UP:
                part.phase = Phase.CAUGHT_UP
                log.info("partition caught up partition=%d orders=%d", number, part.store.count())
                self._changed(True)

    def close(self) -> None:
        for part in self.partitions.values():
            part.close()
        self.partitions = {}
