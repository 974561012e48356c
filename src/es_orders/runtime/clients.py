"""What a materializer is configured with, counts, and the Kafka clients it opens."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
from confluent_kafka import Consumer

from es_orders.runtime.replication import Replicator


@dataclass(frozen=True, slots=True)
class MaterializerConfig:
    source_topic: str
    changelog_topic: str
    # None: records that cannot be folded are logged and counted, not dead-lettered,
    # because another materializer of the same topic (the query service) owns them.
    dlq_topic: str | None
    group_id: str
    state_dir: Path
    kafka: dict[str, Any]  # bootstrap servers and pass-through librdkafka settings
    # Records folded per batch at most. A batch is whatever the consumer has ready, so light
    # load keeps batches (and latency) small; under a backlog, large batches spread the
    # per-batch costs (flush, SQLite commit) and replicate each changed order once.
    max_batch: int = 50_000
    # Partitions of the source topic (all topics share the count): which partition holds
    # a key, so a read of a key held elsewhere is "not here", not "does not exist".
    partitions: int = 3
    # The fold's cache of order states (``runtime.cache``), per worker.
    cache_bytes: int = 64 * 2**20
    # A batch is kept open this long (seconds) for records still to come, folding each as
    # it arrives, before its checkpoint (0: checkpoint as soon as nothing more is ready).
    # For a fold whose observer waits on each record (the command service): a checkpoint
    # blocks the fold for a broker round trip and a SQLite commit, 20-30 ms at times, and
    # one a record delayed every confirmation behind it.
    checkpoint_interval: float = 0.0
    # Keep every order's events in its partition's store (``runtime.history``): the query
    # service's history and time travel. The command service needs only the latest state.
    history: bool = False


class Counters(msgspec.Struct):
    """What the materializer did since it started; read by HTTP threads, written by one."""

    consumed: int = 0
    changed: int = 0
    duplicates: int = 0
    gaps: int = 0
    replayed: int = 0
    dead_letters: int = 0
    changelog_records: int = 0
    restored_records: int = 0
    batches: int = 0  # each checkpointed once: also how many checkpoints were timed
    # Wall-clock seconds spent in checkpoints (changelog, SQLite, offsets), all batches.
    checkpoint_seconds: float = 0.0
    # Wall-clock seconds of the first record consumed and the last batch checkpointed:
    # (last - first) over ``consumed`` is the fold throughput a benchmark reads.
    first_record_at: float = 0.0
    last_checkpoint_at: float = 0.0


class Clients(NamedTuple):
    consumer: Consumer  # the group member that folds the source topic
    restorer: Consumer  # no group: reads changelog partitions on assignment
    replicator: Replicator  # changelog and dead letters


def open_clients(config: MaterializerConfig) -> Clients:
    client_id = f"{config.group_id}-{socket.gethostname()}"
    # Defaults first, then the user's pass-through settings, then what correctness needs.
    base = {"client.id": client_id, **config.kafka}
    # Tansu's first group join takes session.timeout.ms / 2: keep it short.
    # A fetch with nothing new waits fetch.wait.max.ms (500 ms) on the broker. Kafka
    # answers it as soon as a record arrives; Tansu holds it the whole time, so on Tansu
    # ES_ORDERS_KAFKA__FETCH_WAIT_MAX_MS=20 (what `es-orders up --engine tansu` sets)
    # folds a new event within tens of milliseconds. Not the default: on Kafka, 20 ms
    # fetches cost the brokers about 0.65 of a core per idle service.
    consumer_defaults = {
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        # librdkafka fetches ahead up to this much (default 64 MiB): part of a worker's
        # fixed memory, and 16 MiB is still more than a second of the fastest fold.
        "queued.max.messages.kbytes": 16384,
    }
    consumer = Consumer(
        {
            **consumer_defaults,
            **base,
            "group.id": config.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    restorer = Consumer(
        {
            # An empty fetch waits this long on the broker: restore reads to the end.
            "fetch.wait.max.ms": 10,
            **base,
            "group.id": f"{config.group_id}-restore",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # A store position past the changelog's end must fail loudly, not reset.
            "auto.offset.reset": "error",
        }
    )
    return Clients(consumer, restorer, Replicator(base, config.changelog_topic, config.dlq_topic))
