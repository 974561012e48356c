"""Small typed accessors over confluent-kafka messages (its stubs allow None everywhere)."""

from __future__ import annotations

from confluent_kafka import Message

Headers = list[tuple[str, str | bytes | None]]


def position_of(message: Message) -> tuple[int, int]:
    """(partition, offset) of a consumed record; a record without them is a client bug."""
    partition, offset = message.partition(), message.offset()
    if partition is None or offset is None:  # pragma: no cover - never for consumed records
        raise ValueError(f"consumed record without position: {message!r}")
    return partition, offset


def header_list(message: Message) -> Headers:
    headers = message.headers()
    if headers is None:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)


def header(message: Message, name: str) -> bytes | None:
    for key, value in header_list(message):
        if key == name:
            return value.encode() if isinstance(value, str) else value
    return None
