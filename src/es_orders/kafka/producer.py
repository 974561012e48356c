"""An idempotent producer whose sends complete a ``Future`` once the broker has acknowledged.

A client thread calls ``send`` and waits on the returned future; one background loop
(``run``, a ``serving.Worker``) polls the producer, which is what runs the delivery
callbacks that complete the futures. librdkafka reports every message exactly once,
with success or an error, within ``message.timeout.ms``, so a waiter that allows a little
more than that always learns the outcome (unless the poll loop itself is gone).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from es_orders.errors import BrokerError

log = logging.getLogger(__name__)

# How long the broker may take to acknowledge before librdkafka gives up on a message.
DEFAULT_MESSAGE_TIMEOUT_MS = 10_000


class DeliveryError(BrokerError):
    """The broker did not acknowledge a record (librdkafka's report, or no report in time)."""


@dataclass(frozen=True, slots=True)
class Delivered:
    """Where an acknowledged record was written.

    ``offset`` is None when the broker acknowledged the record without saying where: an
    idempotent producer's retry that the broker recognised as already written reports
    success, at an offset it does not know.
    """

    partition: int
    offset: int | None


class AckedProducer:
    """``send`` returns a future of the broker's acknowledgement (acks=all, idempotent).

    Records with the same key keep their order: idempotence keeps the order of in-flight
    requests, and the Java client's partitioner (murmur2) puts a key where the original
    Kotlin service put it, so legacy and new events of one order share a partition.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self._fatal: KafkaError | None = None
        self._producer = Producer(
            {
                # A command waits for its acknowledgement: latency matters, not batching.
                "linger.ms": 0,
                "message.timeout.ms": DEFAULT_MESSAGE_TIMEOUT_MS,
                "partitioner": "murmur2_random",
                **config,
                "enable.idempotence": True,
                "acks": "all",
                "error_cb": self._on_error,
            }
        )
        timeout_ms = int(config.get("message.timeout.ms", DEFAULT_MESSAGE_TIMEOUT_MS))
        self.message_timeout = timeout_ms / 1000
        self._stop = threading.Event()
        # Held while producing and while closing, so that every record is either queued
        # before the final flush (which serves its report) or refused: none waits forever.
        self._closing = threading.Lock()
        self._closed = False

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
            log.error("producer fatal error=%s", error)
        else:
            log.warning("producer error=%s", error)

    def send(self, topic: str, key: bytes, value: bytes) -> Future[Delivered]:
        """Queue one record; the future completes with its position or a ``DeliveryError``."""
        future: Future[Delivered] = Future()

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                future.set_exception(DeliveryError(f"record not acknowledged: {error}"))
            else:
                # Never raise here: this runs on the thread that serves every report.
                future.set_result(Delivered(message.partition() or 0, message.offset()))

        deadline = time.monotonic() + self.message_timeout
        with self._closing:
            if self._closed:
                raise DeliveryError("the producer is stopping")
            while True:
                try:
                    self._producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                except BufferError:
                    # The local queue is full: serve reports until acknowledgements free it.
                    if time.monotonic() > deadline:
                        raise DeliveryError("the producer queue stayed full") from None
                    self._producer.poll(0.001)
                except KafkaException as exc:
                    raise DeliveryError(f"cannot produce to {topic}: {exc}") from exc
                else:
                    return future

    def run(self) -> None:
        """Serve delivery reports until ``stop``; then wait for what is still in flight."""
        try:
            while not self._stop.is_set():
                self._producer.poll(0.1)
                if self._fatal is not None:
                    # An idempotent producer with a fatal error can send nothing more.
                    raise BrokerError(f"the producer failed: {self._fatal}")
        finally:
            with self._closing:
                self._closed = True
            left = self._producer.flush(self.message_timeout)
            if left:
                log.warning("producer stopped with records unacknowledged count=%s", left)

    def stop(self) -> None:
        self._stop.set()
