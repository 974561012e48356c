"""Checkpoint a folded batch (docs/architecture.md, "Exactly-once state without broker
transactions"): replicate, then commit locally, then commit the group's offsets.

1. one changelog record per changed order, however often the batch changed it; the
   producer is flushed, so nothing below is done before the broker acknowledged it all;
2. per partition, one SQLite transaction with its rows, its consumed position and its
   changelog position: a reader sees the whole batch of a partition or none of it;
3. only then the consumer group's offsets, asynchronously (the store, not the group, is
   where a restart resumes from when the two differ).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from es_orders.codec import encode_state
from es_orders.projection import Stored
from es_orders.runtime.cache import StateCache
from es_orders.runtime.partition import AssignedPartition
from es_orders.runtime.replication import Replicator
from es_orders.runtime.store import HistoryBatch, Row


@dataclass(frozen=True, slots=True)
class Checkpointed:
    rows: int  # order states written (each also to the changelog)
    at: float  # Unix seconds


def checkpoint(
    *,
    replicator: Replicator,
    consumer: Consumer,
    source_topic: str,
    partitions: dict[int, AssignedPartition],
    cache: StateCache,
    changed: dict[int, dict[str, Stored]],
    last: dict[int, int],
    history: dict[int, HistoryBatch] | None = None,
) -> Checkpointed:
    """Make the batch that ended at ``last`` (partition -> offset) durable; see above.

    ``changed`` holds, per partition, the new state of every order the batch changed;
    ``history``, per partition, the events that changed them (when history is kept).
    """
    rows: dict[int, list[Row]] = {}
    for number in last:
        states = changed.get(number, {})
        # In id order: the store's B-tree is written page by page instead of at random.
        part_rows = rows[number] = [
            (order_id, encode_state(states[order_id].state), states[order_id].source_offset)
            for order_id in sorted(states)
        ]
        replicator.changelog(number, part_rows)
    changelog_next = replicator.flush()
    for number, offset in last.items():
        part = partitions[number]
        part_history = history.get(number) if history else None
        part.store.checkpoint(rows[number], offset + 1, changelog_next.get(number), part_history)
        part.consumed = offset + 1
        cache.written(number, changed.get(number, {}), sum(len(r[1]) for r in rows[number]))
    consumer.commit(
        offsets=[TopicPartition(source_topic, n, o + 1) for n, o in last.items()],
        asynchronous=True,
    )
    return Checkpointed(sum(len(r) for r in rows.values()), time.time())
