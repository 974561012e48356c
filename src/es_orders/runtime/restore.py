"""Restore a partition's store from the compacted changelog, the way Kafka Streams does.

A restore consumer is assigned the changelog partition (no group, no commits) from the
store's changelog position and reads to the end, as the fetch responses report it
(``enable.partition.eof``; Tansu's ListOffsets cannot be trusted). Rows are
written as they come, in batches; per key the highest source offset wins, so reading a
record twice, or after a crash halfway, changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from es_orders.kafka.records import header, position_of
from es_orders.runtime.replication import SOURCE_OFFSET_HEADER
from es_orders.runtime.store import PartitionStore, Row

log = logging.getLogger(__name__)

_BATCH = 20_000


class RestoreCancelledError(Exception):
    """The service is stopping: the restore stopped where it was (it resumes from there)."""


class LocalStoreAheadError(Exception):
    """The store's changelog position lies beyond the changelog: it is from another history."""

    def __init__(self, partition: int, detail: str) -> None:
        super().__init__(f"partition {partition}: {detail}")
        self.partition = partition


@dataclass(frozen=True, slots=True)
class Restored:
    partition: int
    records: int
    seconds: float
    # The highest source offset among the rows read (-1: none): the fold skips records at
    # or below a row's, so the history of what it restored must come from elsewhere.
    newest_source: int = -1


@dataclass
class _Progress:
    store: PartitionStore
    written: int
    records: int = 0
    done: bool = False
    newest_source: int = -1


def _source_offset(message: Message) -> int | None:
    value = header(message, SOURCE_OFFSET_HEADER)
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def restore_partitions(
    consumer: Consumer,
    topic: str,
    stores: dict[int, PartitionStore],
    progress: Callable[[int, int], None] = lambda _partition, _records: None,
    cancelled: Callable[[], bool] = lambda: False,
) -> list[Restored]:
    """Read each changelog partition from its store's position to its end into the store.

    All partitions are read at once: the broker answers one fetch for all of them, and an
    empty partition costs one fetch round trip instead of one each. ``cancelled`` is asked
    between fetches; when it says so, ``RestoreCancelledError`` is raised, with what was
    read so far written to the stores (the next restore goes on from there).
    """
    started = time.monotonic()
    states = {n: _Progress(store, store.position().changelog) for n, store in stores.items()}
    consumer.assign(
        [
            TopicPartition(topic, n, p.written if p.written > 0 else OFFSET_BEGINNING)
            for n, p in states.items()
        ]
    )
    last_log = started
    try:
        while not all(p.done for p in states.values()):
            if cancelled():
                raise RestoreCancelledError(
                    f"restore of {topic} cancelled at { {n: p.written for n, p in states.items()} }"
                )
            batch: dict[int, tuple[list[Row], int]] = {}
            for message in consumer.consume(_BATCH, timeout=0.2):
                number, offset = position_of(message)
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        states[number].done = True
                    elif error.code() == KafkaError._AUTO_OFFSET_RESET:
                        raise LocalStoreAheadError(number, str(error))
                    else:
                        log.warning("restore fetch error topic=%s error=%s", topic, error)
                    continue
                rows, _ = batch.get(number, ([], 0))
                source, key, value = _source_offset(message), message.key(), message.value()
                if source is None or key is None or value is None:
                    log.warning(
                        "skipping changelog record without key, value or %s partition=%d offset=%d",
                        SOURCE_OFFSET_HEADER,
                        number,
                        offset,
                    )
                else:
                    rows.append((key.decode(errors="replace"), value, source))
                batch[number] = (rows, offset + 1)
            for number, (rows, next_offset) in batch.items():
                state = states[number]
                state.store.restore(rows, next_offset)
                state.written = next_offset
                state.records += len(rows)
                state.newest_source = max([state.newest_source, *(r[2] for r in rows)])
                progress(number, state.records)
            if time.monotonic() - last_log > 5:
                log.info(
                    "restoring topic=%s records=%s",
                    topic,
                    {n: p.records for n, p in states.items()},
                )
                last_log = time.monotonic()
    finally:
        consumer.unassign()
    seconds = time.monotonic() - started
    return [Restored(n, p.records, seconds, p.newest_source) for n, p in states.items()]
