"""Which query instance holds which partition, learned through Kafka itself.

Every instance of a query application writes what it holds to the compacted topic
``<application-id>-members`` (one partition), keyed by an id it draws at start: its
advertised URL, readiness, and each partition its fold workers hold with phase and lag.
It writes on every change of what it holds and every second besides (the heartbeat);
on a clean stop it writes a tombstone. Every instance reads the whole topic, so each
knows all the others, as Kafka Streams' instances know each other's
``application.server`` from the group's assignment metadata.

Who owns a partition: of the live members (heard from within ``MEMBER_TTL``) that claim
it, the one whose claim began latest in the topic. The topic's single partition orders
all claims, so no clock decides: when the group moves a partition, the new holder's
claim comes after the old one's, whether the old holder revoked cleanly (and says so) or
was killed (and says nothing until its records age out). A stale answer is harmless:
a forwarded read that reaches an instance not holding the partition is answered 503
there, never forwarded again.

The group's own description (DescribeGroups) would name the members too, but not their
URLs, phases or lag, and not on every broker the same way; a topic works on both Apache
Kafka and Tansu.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

log = logging.getLogger(__name__)

# How often an instance writes its record when nothing changed, and how long the others
# believe it after its last record (a killed instance stops writing).
HEARTBEAT_INTERVAL = 1.0
MEMBER_TTL = 5.0
# The members thread wakes for a record, and otherwise this often: every wake-up of a
# thread of the service's process is a GIL hand-over, and at 10 a second they doubled
# the p99 of GET /orders/{id} (12 to 25-33 ms at 500/s, idle). What the instance holds
# is published by the thread that learns of the change (``changed``), not by this one.
_POLL_TIMEOUT = HEARTBEAT_INTERVAL


class MemberPartition(msgspec.Struct, frozen=True):
    partition: int
    phase: str  # restoring, catching-up or caught-up
    consumed: int | None = None  # next offset of the events topic to fold
    end: int | None = None  # the partition's end as last fetched
    # Its history: complete, rebuilding (then how far, of what), or None: not kept.
    history: str | None = None
    history_rebuilt: int | None = None
    history_target: int | None = None

    @property
    def lag(self) -> int | None:
        if self.consumed is None or self.end is None:
            return None
        return max(0, self.end - self.consumed)


class MemberRecord(msgspec.Struct, frozen=True):
    """The value of one instance's record in the members topic (JSON)."""

    instance: str
    url: str
    started_at: float  # Unix seconds
    published_at: float  # Unix seconds, when the record was written
    ready: bool
    partitions: tuple[MemberPartition, ...] = ()
    waiting_for: tuple[str, ...] = ()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(MemberRecord)


def encode_member(record: MemberRecord) -> bytes:
    return _encoder.encode(record)


def decode_member(data: bytes) -> MemberRecord:
    return _decoder.decode(data)


def new_instance_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Member:
    record: MemberRecord
    # Partition -> offset in the members topic of the record that began this claim.
    claims: dict[int, int]

    def alive(self, now: float) -> bool:
        return now - self.record.published_at < MEMBER_TTL


@dataclass
class Directory:
    """The members as the topic describes them; one thread applies records, any reads.

    ``members`` is replaced on every change, never mutated, so readers need no lock.
    """

    members: dict[str, Member] = field(default_factory=dict)

    def apply(self, key: bytes, value: bytes | None, offset: int) -> None:
        instance = key.decode(errors="replace")
        members = dict(self.members)
        if value is None:
            members.pop(instance, None)
        else:
            try:
                record = decode_member(value)
            except msgspec.DecodeError:
                log.warning("members topic: record at offset %d is not a member, ignored", offset)
                return
            previous = members.get(instance)
            earlier = previous.claims if previous is not None else {}
            claims = {p.partition: earlier.get(p.partition, offset) for p in record.partitions}
            members[instance] = Member(record, claims)
        self.members = members

    def live(self, now: float | None = None) -> list[Member]:
        """The members heard from within ``MEMBER_TTL``, by URL."""
        at = time.time() if now is None else now
        return sorted((m for m in self.members.values() if m.alive(at)), key=lambda m: m.record.url)

    def owner(self, partition: int, *, exclude: str, now: float | None = None) -> Member | None:
        """The live member other than ``exclude`` that holds ``partition``: the latest
        claim wins. None when no other live member claims it."""
        at = time.time() if now is None else now
        best: Member | None = None
        best_claim = -1
        for instance, member in self.members.items():
            claim = member.claims.get(partition)
            if claim is None or instance == exclude or not member.alive(at):
                continue
            if claim > best_claim:
                best, best_claim = member, claim
        return best


# What an instance says of itself now: (ready, waiting_for, partitions).
Describe = Callable[[], tuple[bool, tuple[str, ...], tuple[MemberPartition, ...]]]


class Membership:
    """A ``serving.Worker``: keeps this instance's record in the members topic current and
    reads everyone's into ``directory`` until ``stop``; then writes its tombstone."""

    def __init__(
        self,
        kafka: dict[str, Any],
        topic: str,
        instance: str,
        url: str,
        describe: Describe,
        directory: Directory,
    ) -> None:
        self._kafka, self._topic = kafka, topic
        self.instance, self.url = instance, url
        self._describe = describe
        self.directory = directory
        self._started_at = time.time()
        self._stopping = threading.Event()
        self._last: tuple[object, ...] | None = None
        self._published_at = 0.0
        self._failing = False
        self._producer: Producer | None = None
        self._lock = threading.Lock()  # ``_publish`` runs on two threads

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        producer = Producer(
            {
                **self._kafka,
                "client.id": f"es-orders-members-{self.instance[:8]}",
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 0,
            }
        )
        consumer = Consumer(
            {
                **self._kafka,
                "client.id": f"es-orders-members-{self.instance[:8]}",
                # Assigned, never subscribed: the id joins no group, nothing is committed.
                "group.id": f"es-orders-members-{self.instance}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # Tansu holds an empty fetch for the whole wait: keep news prompt there too.
                "fetch.wait.max.ms": 100,
            }
        )
        # From offset 0, not OFFSET_BEGINNING: no ListOffsets (unreliable on Tansu); on
        # Kafka a compacted-away start resets to the earliest offset.
        consumer.assign([TopicPartition(self._topic, 0, 0)])
        log.info(
            "members: this instance is %s url=%s topic=%s", self.instance, self.url, self._topic
        )
        self._producer = producer
        try:
            while not self._stopping.is_set():
                # poll returns at the first record; consume(…, 0) takes what else is there.
                first = consumer.poll(_POLL_TIMEOUT)
                if first is not None:
                    for message in [first, *consumer.consume(500, 0)]:
                        self._take(message)
                self._publish()
                producer.poll(0)
        finally:
            with self._lock:
                self._producer = None
            try:
                producer.produce(self._topic, key=self.instance.encode(), value=None, partition=0)
                remaining = producer.flush(3.0)
                if remaining:
                    log.warning(
                        "members: tombstone not acknowledged; peers forget us in %gs", MEMBER_TTL
                    )
            except (KafkaException, BufferError) as exc:
                log.warning("members: could not write the tombstone: %s", exc)
            consumer.close()

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("members: %s", error)
            return
        key, offset = message.key(), message.offset()
        if key is None or offset is None:
            return
        self.directory.apply(key, message.value(), offset)

    def changed(self) -> None:
        """What this instance holds may have changed: publish it now if it did."""
        self._publish()

    def _publish(self) -> None:
        with self._lock:
            producer = self._producer
            if producer is not None:
                self._publish_with(producer)

    def _publish_with(self, producer: Producer) -> None:
        ready, waiting_for, partitions = self._describe()
        shape = (ready, tuple((p.partition, p.phase) for p in partitions))
        now = time.time()
        # A heartbeat a little early (90%): the members thread wakes once a second.
        if shape == self._last and now - self._published_at < 0.9 * HEARTBEAT_INTERVAL:
            return
        record = MemberRecord(
            instance=self.instance,
            url=self.url,
            started_at=self._started_at,
            published_at=now,
            ready=ready,
            partitions=partitions,
            waiting_for=waiting_for,
        )
        try:
            producer.produce(
                self._topic,
                key=self.instance.encode(),
                value=encode_member(record),
                partition=0,
                on_delivery=self._delivered,
            )
        except (KafkaException, BufferError) as exc:
            log.warning("members: could not write this instance's record: %s", exc)
            return
        self._last, self._published_at = shape, now

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None and not self._failing:
            self._failing = True
            log.warning("members: this instance's record was not written: %s", error)
        elif error is None and self._failing:
            self._failing = False
            log.info("members: this instance's record is written again")
