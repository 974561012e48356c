"""``es-orders tail``: a topic's records, decoded, one JSON object a line on stdout.

The consumer joins no group and commits nothing: it is assigned every partition of the
topic, from the start (``--from-beginning``) or from the end. The end of a partition is
where a fetch response reports it (``enable.partition.eof``), as restore finds it, never
a ListOffsets answer: Tansu's "latest" offset is the base offset of the last batch + 1.
So, from the end, the consumer may start a little short of it: what it reads of a
partition before the first fetch that reports the end is skipped, the end being where
that fetch found it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any, BinaryIO, Literal

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from es_orders.codec import CodecError, decode_record, decode_state, format_instant
from es_orders.config import Settings
from es_orders.errors import BrokerError, TopicConfigError
from es_orders.kafka.records import header_list, position_of

log = logging.getLogger(__name__)
_librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")

Kind = Literal["events", "state", "dlq"]

# How long the broker may stay unreachable before a tail that is to end gives up.
DEFAULT_TIMEOUT_S = 10.0
# Ctrl-C is noticed between consume calls: keep each short.
_CONSUME_TIMEOUT_S = 0.2
_CONSUME_BATCH = 1000
# Exit code of a process ended by SIGINT, as shells report it.
EXIT_INTERRUPTED = 130


def topic_of(settings: Settings, kind: Kind) -> str:
    match kind:
        case "events":
            return settings.events_topic
        case "state":
            return settings.state_topic
        case "dlq":
            return settings.dlq_topic


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return _text(raw)


def _timestamp(message: Message) -> str | None:
    kind, millis = message.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE:
        return None
    return format_instant(datetime.fromtimestamp(millis / 1000, UTC))


def _value(kind: Kind, message: Message) -> dict[str, Any]:
    """``value``, and ``error`` when the record is not what its topic should hold."""
    raw = message.value()
    try:
        match kind:
            case "events":
                # Decoded only to say whether the record is a valid event; the record's
                # own JSON is shown, a legacy record as the legacy record it is.
                decode_record(message.key(), raw, message.timestamp()[1])
            case "state":
                if raw is not None:  # None is a tombstone: the order's state is deleted
                    decode_state(raw)
            case "dlq":
                # Whatever it holds: its headers say why it could not be folded.
                return {"value": None if raw is None else _json_or_text(raw)}
    except CodecError as exc:
        return {"value": None if raw is None else _text(raw), "error": str(exc)}
    return {"value": None if raw is None else json.loads(raw)}


def record_json(kind: Kind, message: Message) -> dict[str, Any]:
    """One consumed record as ``tail`` prints it."""
    partition, offset = position_of(message)
    key = message.key()
    headers = {
        name: None if value is None else value if isinstance(value, str) else _text(value)
        for name, value in header_list(message)
    }
    return {
        "topic": message.topic(),
        "partition": partition,
        "offset": offset,
        "timestamp": _timestamp(message),
        "key": None if key is None else _text(key),
        "headers": headers,
        **_value(kind, message),
    }


def _line(record: dict[str, Any]) -> bytes:
    try:
        return json.dumps(record, ensure_ascii=False).encode() + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate (a "\\ud800" escape in the record's JSON) has no UTF-8: it is
        # written as the escape it came as.
        return json.dumps(record).encode() + b"\n"


class _LibrdkafkaLog:
    """librdkafka's own log lines, at DEBUG: the failures that matter reach ``error_cb``,
    and a broker that refuses connections would otherwise print a line every retry."""

    def log(self, _level: int, msg: str, *args: object) -> None:
        _librdkafka_log.debug(msg, *args)


class _BrokerWatch:
    """Since when every broker has been unreachable, as librdkafka reports it."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        # Only a tail that follows waits out an outage, and says so; any other ends
        # with one line saying why.
        self.warn = False

    def on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            if self.down_since is None:
                if self.warn:
                    log.warning("cannot reach the broker, retrying: %s", error.str())
                self.down_since = time.monotonic()
        elif error.fatal():
            log.error("consumer failed: %s", error)
        else:
            log.debug("consumer error=%s", error)

    def reached(self) -> None:
        self.down_since = None


def _consumer(settings: Settings, watch: _BrokerWatch) -> Consumer:
    return Consumer(
        {
            # An empty fetch waits this long on the broker: both the end of a partition
            # and a record produced while following show up within it.
            "fetch.wait.max.ms": 100,
            **settings.kafka_config(),
            # librdkafka needs a group id; no group is joined and nothing is committed.
            "group.id": "es-orders-tail",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "error_cb": watch.on_error,
            "logger": _LibrdkafkaLog(),
        }
    )


def _partitions(consumer: Consumer, settings: Settings, topic: str, timeout: float) -> int:
    # The whole cluster is listed: on Tansu, metadata for a missing topic named in the
    # request would create it.
    try:
        metadata = consumer.list_topics(timeout=timeout)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        reason = error.str() if isinstance(error, KafkaError) else str(exc)
        raise BrokerError(
            f"cannot reach Kafka at {settings.bootstrap_servers} within {timeout:g} s: {reason}"
        ) from None
    found = metadata.topics.get(topic)
    if found is None or not found.partitions:
        raise TopicConfigError(
            f"topic {topic!r} does not exist at {settings.bootstrap_servers} "
            "(the services create it when they start)"
        )
    return len(found.partitions)


def tail(
    settings: Settings,
    kind: Kind,
    out: BinaryIO,
    *,
    from_beginning: bool = False,
    follow: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> int:
    """Write the topic's records to ``out``; return how many were written.

    Without ``follow`` it returns once every partition is at its end; with it, it runs
    until interrupted, and logs ``following`` once every partition has reached its end
    (from then on, every record produced is written). Raises ``BrokerError`` if the
    broker stays unreachable ``timeout`` seconds (while following: only at the start),
    ``TopicConfigError`` if the topic does not exist.
    """
    topic = topic_of(settings, kind)
    watch = _BrokerWatch()
    consumer = _consumer(settings, watch)
    try:
        count = _partitions(consumer, settings, topic, timeout)
        watch.warn = follow
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, n, start) for n in range(count)])
        ended: set[int] = set()
        written = skipped = 0
        while follow or len(ended) < count:
            for message in consumer.consume(_CONSUME_BATCH, timeout=_CONSUME_TIMEOUT_S):
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    log.warning("fetch error topic=%s error=%s", topic, error)
                    continue
                watch.reached()
                partition, _ = position_of(message)
                if error is not None:  # the partition's end
                    if partition not in ended:
                        ended.add(partition)
                        if follow and len(ended) == count:
                            log.info("following topic=%s partitions=%d", topic, count)
                elif from_beginning or partition in ended:
                    out.write(_line(record_json(kind, message)))
                    written += 1
                else:
                    skipped += 1
            out.flush()
            down = watch.down_since
            if not follow and down is not None and time.monotonic() - down > timeout:
                raise BrokerError(
                    f"lost Kafka at {settings.bootstrap_servers} for {timeout:g} s "
                    f"before the end of {topic}"
                )
        if skipped:
            log.debug("skipped records before the end topic=%s records=%d", topic, skipped)
        return written
    finally:
        consumer.close()


def run_tail(settings: Settings, kind: Kind, *, from_beginning: bool, follow: bool) -> int:
    """``tail`` to stdout; the exit code: 0, or 130 after Ctrl-C."""
    try:
        tail(settings, kind, sys.stdout.buffer, from_beginning=from_beginning, follow=follow)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader has gone (``| head -1``): what it did not read was not wanted. Point
        # stdout at /dev/null so the interpreter's last flush does not complain about it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0
