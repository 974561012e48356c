"""Create the topics es-orders needs, and refuse existing ones it cannot use.

Every topic is created with its configs spelled out rather than left to broker defaults:
correctness must not depend on how a broker's defaults happen to be set (the event log
must never expire; a changelog must be compacted, and compaction is only ever declared),
and Tansu's DescribeConfigs returns only configs set explicitly, so an explicit
config is the only kind anyone can inspect there.

Topics are looked up by listing the whole cluster, never by asking metadata for one
topic by name: Tansu auto-creates a topic named in a metadata request, with
its own default partition count.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException

# Public API, re-exported by confluent_kafka.admin without an __all__ that mypy would honour.
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined,unused-ignore]

from es_orders.config import Settings
from es_orders.errors import BrokerError, TopicConfigError

_log = logging.getLogger(__name__)

_FOREVER = "-1"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic as es-orders wants it: name, partition count, replication, explicit configs."""

    name: str
    partitions: int
    replication_factor: int = 1
    config: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a topic needs a name")
        if self.partitions < 1 or self.replication_factor < 1:
            raise ValueError(
                f"topic {self.name!r}: partitions and replication factor must be >= 1, "
                f"got {self.partitions} and {self.replication_factor}"
            )


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics of docs/architecture.md ("Kafka"), named and sized by ``settings``.

    All share the events topic's partition count: each changelog record goes to the
    partition its source event came from.
    """
    # The event log is the source of truth: nothing may ever expire from it.
    event_log = {"cleanup.policy": "delete", "retention.ms": _FOREVER, "retention.bytes": _FOREVER}
    # The latest row per key is the state, which is exactly what compaction keeps.
    # retention.ms guards the day someone adds "delete" to the policy.
    changelog = {
        "cleanup.policy": "compact",
        "retention.ms": _FOREVER,
        "min.compaction.lag.ms": "0",
    }
    # Dead letters are few, and each is work for a person: expiring them after some days
    # would silently hide a poison record nobody has looked at yet. The original record
    # stays in the event log too, but without its dead letter nobody knows where it is.
    dead_letters = dict(event_log)

    def spec(name: str, config: dict[str, str]) -> TopicSpec:
        return TopicSpec(name, settings.partitions, settings.replication_factor, config)

    return [
        spec(settings.events_topic, event_log),
        spec(settings.state_topic, changelog),
        spec(settings.command_state_topic, changelog),
        spec(settings.dlq_topic, dead_letters),
    ]


_ONE_DAY_COMPACTED = {
    "cleanup.policy": "compact,delete",
    "retention.ms": str(24 * 3600 * 1000),
    "segment.ms": str(3600 * 1000),
    "min.compaction.lag.ms": "0",
}


def members_topic_spec(settings: Settings, topic: str | None = None) -> TopicSpec:
    """A members topic (the query instances', or ``topic``): one partition, so one order
    of claims; the latest record per instance is all that counts, and a day bounds what a
    killed instance leaves behind (its records age out of every reader within seconds)."""
    name = topic if topic is not None else settings.members_topic
    return TopicSpec(name, 1, settings.replication_factor, dict(_ONE_DAY_COMPACTED))


def idempotency_topic_spec(settings: Settings) -> TopicSpec:
    """The command instances' Idempotency-Key outcomes: one partition, read whole by every
    instance; compacted per (order, key), and deleted after the day a key is kept."""
    return TopicSpec(
        settings.idempotency_topic, 1, settings.replication_factor, dict(_ONE_DAY_COMPACTED)
    )


def ensure_topics(
    admin_config: Mapping[str, Any], topics: Sequence[TopicSpec], timeout: float = 30.0
) -> list[str]:
    """Create the topics that do not exist and check the partition count of those that do.

    Returns the names this call created. Safe to run from several processes at once: a
    topic another process creates between our look and our create counts as existing.
    ``timeout`` bounds each request to the cluster.

    Raises ``TopicConfigError`` if a topic exists with another partition count than its
    spec (es-orders never adds partitions: that would move keys, and with them order
    state, to other partitions; Tansu cannot add them anyway) or the broker
    rejects a creation; ``BrokerError`` if the cluster cannot be reached.
    """
    admin = AdminClient(dict(admin_config))
    bootstrap = admin_config.get("bootstrap.servers", "?")
    counts = _partition_counts(admin, bootstrap, timeout)
    existing = [spec for spec in topics if spec.name in counts]
    _check_partitions(existing, counts)
    _warn_on_config_drift(admin, existing, timeout)
    missing = [spec for spec in topics if spec.name not in counts]
    if not missing:
        return []
    created, raced = _create(admin, bootstrap, missing, timeout)
    if raced:
        _check_partitions(raced, _partition_counts(admin, bootstrap, timeout))
    return created


def _partition_counts(admin: AdminClient, bootstrap: str, timeout: float) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(
            f"cannot list the topics of Kafka at {bootstrap}: {_reason(exc)}"
        ) from exc
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def _check_partitions(specs: Sequence[TopicSpec], counts: Mapping[str, int]) -> None:
    for spec in specs:
        actual = counts.get(spec.name)
        if actual is not None and actual != spec.partitions:
            raise TopicConfigError(
                f"topic {spec.name!r} exists with {actual} partitions, but {spec.partitions} "
                f"are configured. es-orders does not add partitions (that would move orders "
                f"to other partitions). Configure {actual} partitions (ES_ORDERS_PARTITIONS) "
                f"or delete the topic."
            )


def _create(
    admin: AdminClient, bootstrap: str, specs: Sequence[TopicSpec], timeout: float
) -> tuple[list[str], list[TopicSpec]]:
    """Create ``specs``; return the names created and the specs someone else created first."""
    new_topics = [
        NewTopic(spec.name, spec.partitions, spec.replication_factor, config=dict(spec.config))
        for spec in specs
    ]
    try:
        futures = admin.create_topics(
            new_topics, operation_timeout=timeout, request_timeout=timeout
        )
    except KafkaException as exc:
        raise BrokerError(f"cannot create topics at {bootstrap}: {_reason(exc)}") from exc
    created: list[str] = []
    raced: list[TopicSpec] = []
    for spec in specs:
        try:
            # librdkafka completes the future by request_timeout; the margin is for the thread.
            futures[spec.name].result(timeout=timeout + 5.0)
        except concurrent.futures.TimeoutError as exc:
            raise BrokerError(f"creating topic {spec.name!r} at {bootstrap} timed out") from exc
        except KafkaException as exc:
            error = _error(exc)
            if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                _log.info("topic created concurrently by another client topic=%s", spec.name)
                raced.append(spec)
                continue
            if error is not None and error.code() < 0:
                # Negative codes are librdkafka's own (timeouts, transport), not a refusal.
                raise BrokerError(
                    f"cannot create topic {spec.name!r} at {bootstrap}: {_reason(exc)}"
                ) from exc
            raise TopicConfigError(
                f"the broker refused to create topic {spec.name!r} ({spec.partitions} "
                f"partitions, replication factor {spec.replication_factor}, config "
                f"{spec.config}): {_reason(exc)}"
            ) from exc
        created.append(spec.name)
        _log.info(
            "topic created topic=%s partitions=%s replication_factor=%s config=%s",
            spec.name,
            spec.partitions,
            spec.replication_factor,
            spec.config,
        )
    return created, raced


def _warn_on_config_drift(admin: AdminClient, specs: Sequence[TopicSpec], timeout: float) -> None:
    """Log existing topics whose configs differ from their specs; never fail on it.

    Only a warning: a changed config may be an operator's deliberate choice, and this
    look needs DescribeConfigs rights that a locked-down cluster may not grant. A config
    the broker does not report (Tansu reports only explicit ones) is not drift.
    """
    if not specs:
        return
    resources = {spec.name: ConfigResource("topic", spec.name) for spec in specs}
    try:
        futures = admin.describe_configs(list(resources.values()), request_timeout=timeout)
        described = {
            name: futures[resource].result(timeout=timeout + 5.0)
            for name, resource in resources.items()
        }
    except (KafkaException, concurrent.futures.TimeoutError) as exc:
        _log.warning("cannot check topic configs error=%s", exc)
        return
    for spec in specs:
        entries = described[spec.name]
        for key, wanted in spec.config.items():
            entry = entries.get(key)
            if entry is not None and entry.value != wanted:
                _log.warning(
                    "topic config differs from es-orders' spec topic=%s config=%s "
                    "actual=%s wanted=%s",
                    spec.name,
                    key,
                    entry.value,
                    wanted,
                )


def _error(exc: KafkaException) -> KafkaError | None:
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, KafkaError) else None


def _reason(exc: KafkaException) -> str:
    error = _error(exc)
    return f"{error.name()}: {error.str()}" if error is not None else str(exc)
