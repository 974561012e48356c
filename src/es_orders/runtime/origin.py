"""Which history of the topics a local store's positions belong to.

An offset means something only in the partition it was read from. A state directory
kept across a broker restart (Tansu forgets everything; a Kafka cluster can be rebuilt)
or across a topic deleted and created again holds positions of another history: restored
from, they wedge a restore or skip events as "already folded". So each store records the
cluster id and the topic ids (where the broker gives them) of its events and changelog
topics, and a store from another origin is discarded and rebuilt from the changelog.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)

_CLUSTER = "cluster_id"
_NO_ID = {"", "AAAAAAAAAAAAAAAAAAAAAA"}  # a broker without topic ids answers the zero UUID


def current_origin(
    kafka: dict[str, Any], topics: list[str], timeout: float = 10.0
) -> dict[str, str]:
    """The cluster id and the ids of ``topics`` as the broker reports them now.

    What the broker cannot tell is left out (Tansu has no topic ids); an unreachable
    broker gives an empty origin, which matches any store.
    """
    admin = AdminClient(kafka)
    origin: dict[str, str] = {}
    try:
        cluster_id = admin.list_topics(timeout=timeout).cluster_id
    except KafkaException as exc:
        log.warning("cannot tell which cluster this is, not checking stores error=%s", exc)
        return origin
    if cluster_id:
        origin[_CLUSTER] = str(cluster_id)
    try:
        described = admin.describe_topics(TopicCollection(topics), request_timeout=timeout)
        for topic, future in described.items():
            topic_id = str(future.result().topic_id or "")
            if topic_id not in _NO_ID:
                origin[f"topic:{topic}"] = topic_id
    except (KafkaException, ValueError) as exc:
        log.info("the broker gives no topic ids, checking stores by cluster id only error=%s", exc)
    return origin


def differences(saved: dict[str, str], current: dict[str, str]) -> list[str]:
    """What ``saved`` says that ``current`` contradicts; keys only one of them knows are fine."""
    return [
        f"{key} {saved[key]} (now {value})"
        for key, value in sorted(current.items())
        if key in saved and saved[key] != value
    ]
