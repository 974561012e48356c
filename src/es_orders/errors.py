"""The exceptions es-orders raises on purpose, all under one root.

A caller (the CLI, an HTTP error handler) catches ``EsOrdersError`` to tell an
expected failure it can explain to a user from a bug. Adapters over third-party
libraries wrap their exceptions in one of these (``raise BrokerError(...) from exc``),
so no ``KafkaException`` or ``sqlite3.Error`` leaks past the module that caused it.

    EsOrdersError
    ├── BrokerError          a Kafka broker cannot be started, reached, or refused a request
    ├── TopicConfigError     a topic cannot be created, or exists with a shape we cannot use
    ├── CodecError           (es_orders.codec) a record that is not a valid event or state
    └── BenchError           a benchmark phase cannot run or its services misbehave

Add a subclass here, and to this tree, when a new kind of failure needs its own handling.
"""

from __future__ import annotations


class EsOrdersError(Exception):
    """Root of every exception es-orders raises on purpose."""


class BrokerError(EsOrdersError):
    """A Kafka broker (the dev broker or a real one) cannot be started, reached, or refused."""


class TopicConfigError(EsOrdersError):
    """A topic cannot be created, or exists with a shape es-orders cannot use."""


class BenchError(EsOrdersError):
    """A benchmark phase cannot run: a service it started failed, or a wait timed out."""
