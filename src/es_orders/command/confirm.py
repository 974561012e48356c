"""What the log decided: which appended events the fold applied, and the Idempotency-Keys.

The command service's own fold tells ``FoldWatch`` of every record it folds (a
``FoldObserver``, on the fold's thread). From that:

- a command waiting for its event learns whether the fold applied it (the first event
  of its version of the order, in partition order) or dropped it as a duplicate (it lost
  a race with another instance's event of that version), with the order's state there;
- the handler's overlay gets every state the fold computed before the store has it, so
  commands are decided against the fold's latest, whoever wrote it;
- every applied event that carries an ``Idempotency-Key`` goes into the
  ``IdempotencyIndex`` at once, and with the next checkpoint into the compacted
  idempotency topic, acknowledged before the store commits. Every instance reads that
  topic whole, so a retry finds the first outcome on any instance and after restarts,
  while what was folded but not checkpointed when an instance died is folded again by
  the partition's next holder, which then writes it.

Written by hand: this is the seam between Kafka's order of records and the HTTP request
waiting on it; no library knows either side.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from es_orders.domain import OrderCreated, OrderState
from es_orders.projection import RecordFolded

log = logging.getLogger(__name__)

# How long a key is remembered (and the idempotency topic's retention).
KEY_TTL = 24 * 3600.0
_PRUNE_INTERVAL = 60.0
_POLL_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What the fold made of an appended event."""

    applied: bool  # False: a record of the same version of the order came first
    state: OrderState | None  # the order's state right after the record
    partition: int
    offset: int


class UnconfirmedError(Exception):
    """The event's outcome cannot be learned here now: its partition was revoked while the
    command waited, or the record was folded before this fold began (a replay)."""


class KeyOutcome(msgspec.Struct, frozen=True):
    """The first outcome of a request with an Idempotency-Key: the value of its record in
    the idempotency topic (JSON), keyed ``<order id> <key>``."""

    order_id: str
    key: str
    digest: str
    status: int  # 201 (created) or 200
    version: int
    partition: int
    offset: int
    at: float  # Unix seconds: when the event occurred


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(KeyOutcome)
# The key of the marker records ``IdempotencyIndex.sync`` writes: no order id has a space.
_MARKER = b" sync"


def index_key(order_id: str, key: str) -> bytes:
    # Neither order ids nor Idempotency-Keys contain a space.
    return f"{order_id} {key}".encode()


class IdempotencyIndex:
    """Every instance's copy of the idempotency topic, plus what its own fold applied.

    A ``serving.Worker``: its thread reads the topic from the start and follows it. Any
    thread may ``lookup``; ``sync`` waits until everything written to the topic before
    the call has been read.
    """

    def __init__(self, kafka: dict[str, Any], topic: str, instance: str) -> None:
        self._kafka, self.topic, self._instance = kafka, topic, instance
        self._outcomes: dict[tuple[str, str], KeyOutcome] = {}
        self._stopping = threading.Event()
        self._read = threading.Condition()
        self._position = 0  # next offset of the topic to read
        self._synced_since = -1.0  # monotonic: syncs began at or after this saw everything
        self._sync_lock = threading.Lock()
        self._producer: Producer | None = None
        self.caught_up = False  # read to the end once since start

    def lookup(self, order_id: str, key: str, now: float | None = None) -> KeyOutcome | None:
        outcome = self._outcomes.get((order_id, key))
        if outcome is None or (now if now is not None else time.time()) - outcome.at > KEY_TTL:
            return None
        return outcome

    def put(self, outcome: KeyOutcome) -> None:
        """Remember ``outcome`` unless an earlier one of the same request is known: the
        first event applied for a key is its outcome."""
        known = self._outcomes.get((outcome.order_id, outcome.key))
        if known is None or outcome.offset < known.offset:
            self._outcomes[(outcome.order_id, outcome.key)] = outcome

    def __len__(self) -> int:
        return len(self._outcomes)

    def synced_since(self) -> float:
        return self._synced_since

    def sync(self, timeout: float) -> bool:
        """Read the topic up to a marker written now: True once every outcome written
        before this call is in the index, False if that took longer than ``timeout``."""
        started = time.monotonic()
        with self._sync_lock:  # concurrent callers share one marker
            if self._synced_since >= started:
                return True
            producer = self._producer
            if producer is None:
                return False
            delivered: Future[int] = Future()

            def on_delivery(error: KafkaError | None, message: Message) -> None:
                if error is not None:
                    delivered.set_exception(KafkaException(error))
                else:
                    delivered.set_result(message.offset() or 0)

            try:
                producer.produce(self.topic, key=_MARKER, value=None, on_delivery=on_delivery)
                producer.flush(timeout)
                marker = delivered.result(timeout=0)
            except Exception as exc:
                log.warning("idempotency index: sync marker not written: %s", exc)
                return False
            with self._read:
                if not self._read.wait_for(
                    lambda: self._position > marker, max(0.0, started + timeout - time.monotonic())
                ):
                    return False
            self._synced_since = started
            return True

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        name = f"es-orders-idempotency-{self._instance[:8]}"
        self._producer = Producer({**self._kafka, "client.id": name, "acks": "all", "linger.ms": 0})
        consumer = Consumer(
            {
                **self._kafka,
                "client.id": name,
                # Assigned, never subscribed: the id joins no group, nothing is committed.
                "group.id": f"{name}-{self._instance}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 100,
            }
        )
        # From offset 0, not OFFSET_BEGINNING: no ListOffsets (unreliable on Tansu).
        consumer.assign([TopicPartition(self.topic, 0, 0)])
        pruned_at = time.monotonic()
        try:
            while not self._stopping.is_set():
                first = consumer.poll(_POLL_TIMEOUT)
                if first is not None:
                    self._take([first, *consumer.consume(1000, 0)])
                if time.monotonic() - pruned_at > _PRUNE_INTERVAL:
                    self._prune(time.time())
                    pruned_at = time.monotonic()
        finally:
            consumer.close()
            self._producer.flush(3.0)

    def _take(self, messages: Iterable[Message]) -> None:
        position = self._position
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    if not self.caught_up:
                        log.info("idempotency index: read %d keys", len(self._outcomes))
                    self.caught_up = True
                else:
                    log.warning("idempotency index: %s", error)
                continue
            offset, key, value = message.offset(), message.key(), message.value()
            if offset is None:
                continue
            position = offset + 1
            if key == _MARKER or value is None:
                continue
            try:
                self.put(_decoder.decode(value))
            except msgspec.DecodeError:
                log.warning("idempotency index: record at offset %d is not an outcome", offset)
        with self._read:
            self._position = position
            self._read.notify_all()

    def _prune(self, now: float) -> None:
        old = [k for k, o in self._outcomes.items() if now - o.at > KEY_TTL]
        for k in old:
            self._outcomes.pop(k, None)


class FoldWatch:
    """The command service's ``FoldObserver``: confirmations, overlay feed, key outcomes."""

    def __init__(
        self,
        index: IdempotencyIndex,
        fresh_state: Callable[[OrderState, int, int], None],
    ) -> None:
        self._index = index
        self._fresh_state = fresh_state  # (state, partition, offset) of every change folded
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[int, Future[Confirmation]]] = {}
        self._unwritten: list[KeyOutcome] = []

    def expect(self, event_id: str, partition: int) -> Future[Confirmation]:
        """A future for what the fold makes of the event ``event_id``; call before
        appending it, so that a fold quicker than the acknowledgement is not missed."""
        future: Future[Confirmation] = Future()
        with self._lock:
            self._waiting[event_id] = (partition, future)
        return future

    def forget(self, event_id: str) -> None:
        with self._lock:
            self._waiting.pop(event_id, None)

    def revoked(self, held: Iterable[int]) -> None:
        """Fail the waits of events in partitions no longer ``held``: this fold will not
        see them, and their outcome is for the partition's next holder to learn."""
        keep = set(held)
        with self._lock:
            gone = {e: w for e, w in self._waiting.items() if w[0] not in keep}
            for event_id in gone:
                del self._waiting[event_id]
        for partition, future in gone.values():
            with contextlib.suppress(InvalidStateError):
                future.set_exception(UnconfirmedError(f"partition {partition} was revoked"))

    # -- FoldObserver ----------------------------------------------------------------

    def folded(self, partition: int, offset: int, folded: RecordFolded) -> None:
        state = folded.state
        applied = folded.stored is not None
        if applied and state is not None:
            self._fresh_state(state, partition, offset)
        event = folded.event
        if event is None:
            return
        if applied and event.idempotency is not None:
            outcome = KeyOutcome(
                order_id=event.order_id,
                key=event.idempotency.key,
                digest=event.idempotency.digest,
                status=201 if isinstance(event, OrderCreated) else 200,
                version=event.version,
                partition=partition,
                offset=offset,
                at=event.occurred_at.timestamp(),
            )
            self._index.put(outcome)
            with self._lock:
                self._unwritten.append(outcome)
        if not self._waiting:
            return
        with self._lock:
            waiting = self._waiting.pop(event.event_id, None)
        if waiting is None:
            return
        # A waiter that gave up may have cancelled its future: nothing to tell it then.
        with contextlib.suppress(InvalidStateError):
            if folded.replayed:
                waiting[1].set_exception(UnconfirmedError("folded before this fold began"))
            else:
                waiting[1].set_result(Confirmation(applied, state, partition, offset))

    def checkpointing(self) -> list[tuple[str, bytes, bytes | None]]:
        with self._lock:
            unwritten, self._unwritten = self._unwritten, []
        return [
            (self._index.topic, index_key(o.order_id, o.key), _encoder.encode(o)) for o in unwritten
        ]
