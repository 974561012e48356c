"""Restore from a changelog that Apache Kafka has really compacted.

Tansu never compacts, so only Apache Kafka can show that restore copes with what
compaction leaves: fewer records than were written, offsets with gaps, one version per
key, and a warm store whose changelog position points at an offset that no longer
exists. The changelog is created with es-orders' own configs plus fast compaction
(small segments, any dirt cleanable); the session broker's cleaner looks every second.

The story: instance W folds rounds 1-6 and stops, keeping its files; X takes over (cold
restore) and folds rounds 7-12; one record per partition after ``segment.ms`` rolls the
segments, and the cleaner compacts them (proven from the changelog itself). Then C
restores cold from the compacted changelog, folds round 13 and stops; then W comes back
with its stale files and restores warm from its old position, across the gaps.

Events go to explicit partitions (order ``n`` to partition ``n % 3``), so that every
partition holds orders, among them one that stops changing after round 3: its record
stays behind while the records around it are cleaned, so the gaps are inside the log
too, not only a removed prefix.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from es_orders.brokers import Broker
from es_orders.codec import encode_event
from es_orders.config import Settings
from es_orders.domain import Event, OrderCreated, PriceChanged, QuantityChanged
from es_orders.kafka.admin import ensure_topics, topic_specs
from es_orders.kafka.records import header, position_of
from es_orders.runtime.partition import store_path
from es_orders.runtime.replication import SOURCE_OFFSET_HEADER
from es_orders.runtime.store import PartitionStore
from es_orders.runtime.view import MaterializedView
from es_orders.workload import EPOCH
from tests.integration.runtime_support import (
    RunningMaterializer,
    expected_fold,
    materializer_config,
    read_all,
)
from tests.vectors import VectorRecord, normalize_state

pytestmark = pytest.mark.integration

PARTITIONS = 3
ORDERS = 12  # order n lives in partition n % PARTITIONS
FROZEN = range(PARTITIONS)  # orders 0-2, one per partition, change up to round 3 only
FROZEN_AFTER = 3
SEGMENT_MS = 300
# Compact as soon as the cleaner looks: segments roll after SEGMENT_MS (on the next
# append), any share of dirty records is worth cleaning, and no record is too young.
FAST_COMPACTION = {
    "segment.ms": str(SEGMENT_MS),
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "100",
}
COMPACTION_TIMEOUT = 60.0


@pytest.fixture(autouse=True)
def _kafka_only(broker: Broker) -> None:
    if broker.engine == "tansu":
        pytest.skip("Tansu never compacts a topic: compaction needs Apache Kafka")


def create_compacting_topics(kafka_config: dict[str, Any], prefix: str) -> dict[str, str]:
    """The query service's topics as ``topic_specs`` declares them, the changelog's
    configs extended with ``FAST_COMPACTION``."""
    settings = Settings(
        bootstrap_servers=kafka_config["bootstrap.servers"],
        events_topic=f"{prefix}-events",
        state_topic=f"{prefix}-state",
        dlq_topic=f"{prefix}-dlq",
        partitions=PARTITIONS,
        replication_factor=1,
    )
    specs = [
        replace(spec, config={**spec.config, **FAST_COMPACTION})
        if spec.name == settings.state_topic
        else spec
        for spec in topic_specs(settings)
        if spec.name != settings.command_state_topic
    ]
    assert settings.state_topic in {s.name for s in specs}
    ensure_topics(kafka_config, specs)
    return {
        "events": settings.events_topic,
        "state": settings.state_topic,
        "dlq": settings.dlq_topic,
    }


@dataclass(frozen=True)
class Produced:
    partition: int
    record: VectorRecord


def event_record(partition: int, event: Event) -> Produced:
    return Produced(partition, VectorRecord(event.order_id.encode(), encode_event(event), {}, 0))


def round_of(version: int) -> list[Produced]:
    """One event for every order still changing, making its version ``version``."""
    at = EPOCH + timedelta(seconds=version)
    events: list[Produced] = []
    for index in range(ORDERS):
        if index in FROZEN and version > FROZEN_AFTER:
            continue
        order_id, event_id = f"order-{index:02d}", str(uuid.uuid4())
        event: Event
        if version == 1:
            event = OrderCreated(event_id, order_id, 1, at, "u1", "p1", 1, 100)
        elif version % 2:
            event = QuantityChanged(event_id, order_id, version, at, version)
        else:
            event = PriceChanged(event_id, order_id, version, at, 1000 * version + index)
        events.append(event_record(index % PARTITIONS, event))
    return events


def produce(kafka_config: dict[str, Any], topic: str, records: list[Produced]) -> None:
    producer = Producer({**kafka_config, "enable.idempotence": True, "linger.ms": 5})
    for produced in records:
        record = produced.record
        producer.produce(topic, record.value, record.key, produced.partition)
    assert producer.flush(30) == 0


@dataclass(frozen=True)
class ChangelogRecord:
    offset: int
    key: str
    version: int  # of the order state it carries
    timestamp_ms: int


@dataclass(frozen=True)
class ChangelogPartition:
    records: list[ChangelogRecord]  # what the log holds now, in offset order
    low: int  # the log start offset (compaction never moves it)
    high: int  # the high watermark: every record ever appended (no transactions here)

    @property
    def offsets(self) -> list[int]:
        return [r.offset for r in self.records]

    def missing(self, start: int = 0) -> int:
        """Offsets from ``start`` (at least the log start) to the end that hold no record."""
        start = max(start, self.low)
        return self.high - start - len(self.from_offset(start))

    def from_offset(self, start: int) -> list[ChangelogRecord]:
        return [r for r in self.records if r.offset >= start]


def _changelog_record(message: Message) -> ChangelogRecord:
    _, offset = position_of(message)
    key, value = message.key(), message.value()
    assert key is not None and value is not None
    assert header(message, SOURCE_OFFSET_HEADER) is not None  # kept by the cleaner
    return ChangelogRecord(
        offset, key.decode(), json.loads(value)["version"], message.timestamp()[1]
    )


def read_changelog(kafka_config: dict[str, Any], topic: str) -> dict[int, ChangelogPartition]:
    """Every partition of the changelog from its start, with its watermarks."""
    by_partition: dict[int, list[ChangelogRecord]] = {p: [] for p in range(PARTITIONS)}
    for message in read_all(kafka_config, topic, PARTITIONS):
        by_partition[position_of(message)[0]].append(_changelog_record(message))
    consumer = Consumer({**kafka_config, "group.id": "watermarks", "enable.auto.commit": False})
    try:
        marks = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in range(PARTITIONS)
        }
    finally:
        consumer.close()
    return {
        p: ChangelogPartition(sorted(records, key=lambda r: r.offset), *marks[p])
        for p, records in by_partition.items()
    }


def latest_versions(records: list[Produced]) -> dict[str, int]:
    latest = {}
    for produced in records:
        key, value = produced.record.key, json.loads(produced.record.value)
        assert key is not None
        latest[key.decode()] = int(value["version"])
    return latest


def compacted(changelog: dict[int, ChangelogPartition], latest: dict[str, int]) -> bool:
    """Whether the cleaner has left each order one record, with its latest version."""
    left = [r for part in changelog.values() for r in part.records]
    return sorted(r.key for r in left) == sorted(latest) and all(
        r.version == latest[r.key] for r in left
    )


def view_states(view: MaterializedView) -> dict[str, dict[str, Any]]:
    return {oid: normalize_state(json.loads(body)) for oid, body in view.page(None, 1000)}


def folded(running: RunningMaterializer, records: list[Produced]) -> None:
    """Wait until the instance is ready and shows exactly the fold of ``records``."""
    view = running.view
    expected = expected_fold([p.record for p in records])
    running.wait_until(lambda: view.readiness().ready and view_states(view) == expected)


def changelog_positions(state_dir: Path, group: str, events_topic: str) -> dict[int, int]:
    """Where each partition's store would resume reading the changelog."""
    positions = {}
    for partition in range(PARTITIONS):
        store = PartitionStore(store_path(state_dir, group, events_topic, partition))
        try:
            positions[partition] = store.position().changelog
        finally:
            store.close()
    return positions


def test_restore_from_a_compacted_changelog_cold_and_warm(
    kafka_config: dict[str, Any], topic_prefix: str, tmp_path: Path
) -> None:
    topics = create_compacting_topics(kafka_config, topic_prefix)
    group = f"{topic_prefix}-g"
    config_w = materializer_config(kafka_config, topics, tmp_path / "w", group)
    config_x = materializer_config(kafka_config, topics, tmp_path / "x", group)
    config_c = materializer_config(kafka_config, topics, tmp_path / "c", group)
    events: list[Produced] = []

    def fold_rounds(running: RunningMaterializer, versions: range) -> None:
        # One round at a time, each folded before the next is produced: every round is
        # a batch of its own, so each order gets one changelog record per round.
        for version in versions:
            batch = round_of(version)
            events.extend(batch)
            produce(kafka_config, topics["events"], batch)
            folded(running, events)

    # W folds rounds 1-6 and stops, keeping its files (and their changelog positions).
    with RunningMaterializer(config_w) as w:
        fold_rounds(w, range(1, 7))
        written = w.materializer.counters.changelog_records
    stale = changelog_positions(tmp_path / "w", group, topics["events"])

    # X restores cold (the cleaner may be at work meanwhile) and folds rounds 7-12.
    with RunningMaterializer(config_x) as x:
        folded(x, events)
        fold_rounds(x, range(7, 13))
        # A segment rolls on the first append more than segment.ms after its first
        # record: once every record so far is older than that, one new order in every
        # partition rolls its segment, and all of rounds 1-12 become cleanable.
        newest = max(
            r.timestamp_ms
            for part in read_changelog(kafka_config, topics["state"]).values()
            for r in part.records
        )
        time.sleep(max(0.0, (newest + SEGMENT_MS + 100) / 1000 - time.time()))
        at = EPOCH + timedelta(seconds=100)
        rollers = [
            event_record(p, OrderCreated(str(uuid.uuid4()), f"roll-{p}", 1, at, "u", "p", 1, 1))
            for p in range(PARTITIONS)
        ]
        events.extend(rollers)
        produce(kafka_config, topics["events"], rollers)
        folded(x, events)
        written += x.materializer.counters.changelog_records

        latest = latest_versions(events)
        deadline = time.monotonic() + COMPACTION_TIMEOUT
        while not compacted(changelog := read_changelog(kafka_config, topics["state"]), latest):
            assert time.monotonic() < deadline, (
                f"not compacted within {COMPACTION_TIMEOUT} s: "
                f"{ {p: (c.offsets, c.high) for p, c in changelog.items()} }"
            )
            time.sleep(0.5)

    # The proof, from the log itself: of the records written, one per order is left, its
    # latest version (checked by ``compacted``), and the offsets have gaps: a cleaned
    # prefix, a hole after each partition's frozen order, and W's stale position.
    left = sum(len(part.records) for part in changelog.values())
    assert sum(part.high for part in changelog.values()) == written
    assert left == ORDERS + PARTITIONS < written
    for number, part in changelog.items():
        offsets = part.offsets
        assert part.low == 0 < offsets[0] and offsets[-1] == part.high - 1, number
        assert offsets[1] - offsets[0] > 1, f"no hole after the frozen order: {number}"
        assert stale[number] not in offsets  # X's first record of round 7 is gone
        assert part.missing(stale[number]) > 0
    print(
        f"\ncompaction: {written} records written, {left} left; per partition "
        f"(high watermark, offsets left): "
        f"{ {p: (c.high, c.offsets) for p, c in changelog.items()} }; "
        f"W's stale changelog positions {stale}"
    )

    # Cold: a fresh state dir is rebuilt from what compaction left, events are not replayed.
    with RunningMaterializer(config_c) as c:
        folded(c, events)
        assert c.materializer.counters.restored_records == left
        assert c.materializer.counters.consumed == 0
        fold_rounds(c, range(13, 14))

    # Warm: W's files are behind by rounds 7-13. Its restore starts at offsets that were
    # compacted away and reads across the gaps to the end, again without replaying events.
    after_c = read_changelog(kafka_config, topics["state"])
    tail = sum(len(after_c[p].from_offset(stale[p])) for p in range(PARTITIONS))
    tail_written = sum(after_c[p].high - stale[p] for p in range(PARTITIONS))
    assert tail < tail_written
    with RunningMaterializer(config_w) as w:
        folded(w, events)
        assert w.materializer.counters.restored_records == tail
        assert w.materializer.counters.consumed == 0
    # And it resumes, next time, after the last record it read, not after a count of them.
    ends = {p: after_c[p].high for p in range(PARTITIONS)}
    assert changelog_positions(tmp_path / "w", group, topics["events"]) == ends
    print(f"warm restore: {tail} records read of {tail_written} written after {stale}")
