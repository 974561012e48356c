"""Replicate a folded batch to the broker: changelog rows and dead letters, acknowledged.

Nothing is checkpointed locally before ``flush`` returns with every record acknowledged
(invariant 1 in docs/architecture.md, "Exactly-once state without broker
transactions"): a failure raises, and the batch is folded again after restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from es_orders.errors import EsOrdersError
from es_orders.kafka.records import Headers, header_list, position_of

log = logging.getLogger(__name__)

SOURCE_OFFSET_HEADER = "source-offset"


class ReplicationError(EsOrdersError):
    """The broker did not acknowledge changelog or dead letter records."""


@dataclass
class _Acks:
    errors: list[str] = field(default_factory=list)
    changelog_next: dict[int, int] = field(default_factory=dict)

    def on_ack(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self.errors.append(str(error))

    def on_last_changelog(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.errors.append(str(error))
            return
        partition, offset = message.partition(), message.offset()
        if partition is None or offset is None:
            # Written, at an offset the broker did not report (an idempotent retry it
            # recognised as a duplicate): the restore position stays where it was, which
            # only means a restore reads a little more.
            return
        self.changelog_next[partition] = max(self.changelog_next.get(partition, 0), offset + 1)


class Replicator:
    """One idempotent producer (acks=all) for a materializer's changelog and dead letters."""

    def __init__(self, config: dict[str, Any], changelog_topic: str, dlq_topic: str | None) -> None:
        self._producer = Producer(
            {"linger.ms": 5, **config, "enable.idempotence": True, "acks": "all"}
        )
        self._changelog_topic = changelog_topic
        self._dlq_topic = dlq_topic
        self._acks = _Acks()

    def changelog(self, partition: int, rows: list[tuple[str, bytes, int]]) -> None:
        """Produce (order id, state, source offset) rows to one changelog partition.

        Only the last record's delivery report records its offset (where the next restore
        starts): the idempotent producer delivers a partition's records in order, and a
        Python callback per record costs more than the rest of the record's replication.
        """
        on_ack, last = self._acks.on_ack, len(rows) - 1
        produce, topic = self._producer.produce, self._changelog_topic
        for n, (order_id, state, source_offset) in enumerate(rows):
            headers: Headers = [(SOURCE_OFFSET_HEADER, str(source_offset).encode())]
            on_delivery = on_ack if n < last else self._acks.on_last_changelog
            try:  # inline, not through _produce: this runs once per changed order
                produce(
                    topic,
                    state,
                    order_id.encode(),
                    partition,
                    on_delivery=on_delivery,
                    headers=headers,
                )
            except BufferError:
                self._produce(topic, order_id.encode(), state, headers, on_delivery, partition)

    def dead_letter(self, message: Message, error: str) -> None:
        partition, offset = position_of(message)
        source = f"{message.topic()}/{partition}/{offset}"
        if self._dlq_topic is None:
            log.warning("skipped a record that cannot be folded source=%s error=%s", source, error)
            return
        log.warning("dead letter source=%s error=%s", source, error)
        headers = [*header_list(message), ("error", error.encode()), ("source", source.encode())]
        self._produce(self._dlq_topic, message.key(), message.value(), headers, self._acks.on_ack)

    def extra(self, topic: str, key: bytes, value: bytes | None) -> None:
        """Produce a record to another topic, acknowledged by the next ``flush``."""
        self._produce(topic, key, value, [], self._acks.on_ack)

    def flush(self, timeout: float = 60) -> dict[int, int]:
        """Wait for every record; return, per partition, the changelog offset after the last."""
        acks, self._acks = self._acks, _Acks()
        remaining = self._producer.flush(timeout)
        if remaining or acks.errors:
            raise ReplicationError(
                f"broker did not acknowledge {remaining} records; errors: {acks.errors[:3]}"
            )
        return acks.changelog_next

    def close(self) -> None:
        self._producer.flush(10)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        on_delivery: Any,
        partition: int = -1,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=headers,
                    partition=partition,
                    on_delivery=on_delivery,
                )
            except BufferError:  # the local queue is full: let deliveries drain, then retry
                self._producer.poll(0.05)
            else:
                return
