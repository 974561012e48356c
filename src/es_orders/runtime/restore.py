"""Restore a partition's store from the compacted changelog, the way Kafka Streams does.

A restore consumer is assigned the changelog partition (no group, no commits) from the
store's changelog position and reads to the end, as the fetch responses report it
(``enable.partition.eof``; the dev broker's ListOffsets cannot be trusted). Rows are
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


class LocalStoreAheadError(Exception):
    """The store's changelog position lies beyond the changelog: it is from another history."""


@dataclass(frozen=True, slots=True)
class Restored:
    partition: int
    records: int
    seconds: float


def _source_offset(message: Message) -> int | None:
    value = header(message, SOURCE_OFFSET_HEADER)
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def restore_partition(
    consumer: Consumer,
    topic: str,
    partition: int,
    store: PartitionStore,
    progress: Callable[[int], None] = lambda _records: None,
) -> Restored:
    """Read the changelog partition from the store's position to its end into ``store``."""
    started = time.monotonic()
    start = store.position().changelog
    consumer.assign([TopicPartition(topic, partition, start if start > 0 else OFFSET_BEGINNING)])
    records = 0
    next_offset = written = start
    last_log = started
    try:
        while True:
            rows: list[Row] = []
            at_end = False
            for message in consumer.consume(_BATCH, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end = True
                        continue
                    if error.code() == KafkaError._AUTO_OFFSET_RESET:
                        raise LocalStoreAheadError(str(error))
                    log.warning("restore fetch error topic=%s partition=%d error=%s",
                                topic, partition, error)  # fmt: skip
                    continue
                _, offset = position_of(message)
                source, key, value = _source_offset(message), message.key(), message.value()
                if source is None or key is None or value is None:
                    log.warning("skipping changelog record without key, value or %s offset=%d",
                                SOURCE_OFFSET_HEADER, offset)  # fmt: skip
                else:
                    rows.append((key.decode(errors="replace"), value, source))
                next_offset = offset + 1
            if next_offset != written:
                store.restore(rows, next_offset)
                written = next_offset
            records += len(rows)
            progress(records)
            now = time.monotonic()
            if now - last_log > 5:
                log.info("restoring partition=%d records=%d", partition, records)
                last_log = now
            if at_end:
                break
    finally:
        consumer.unassign()
    return Restored(partition, records, time.monotonic() - started)
