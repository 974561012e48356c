"""The exceptions es-orders raises on purpose, all under one root.

A caller (the CLI, an HTTP error handler) catches ``EsOrdersError`` to tell an
expected failure it can explain to a user from a bug. Adapters over third-party
libraries wrap their exceptions in one of these (``raise BrokerError(...) from exc``),
so no ``KafkaException`` or ``sqlite3.Error`` leaks past the module that caused it.

    EsOrdersError
    ├── BrokerError            a Kafka broker cannot be started, reached, or refused a request
    │   ├── PortTakenError     (brokers.common) a broker's port is taken
    │   ├── JavaNotFoundError  (brokers.jars) no Java 17+ to run Apache Kafka with
    │   ├── KafkaJarsError     (brokers.jars) Kafka's jars not cached, and Maven cannot fetch
    │   └── DeliveryError      (kafka.producer) the broker did not acknowledge an event
    ├── TopicConfigError       a topic cannot be created, or exists with a shape we cannot use
    ├── CodecError             (codec) a record that is not a valid event or state
    ├── ReplicationError       (runtime.replication) changelog or dead letters not acknowledged
    ├── StoreError             (runtime.store) a local state store cannot be read or written
    ├── CommandUnavailableError  (command.errors) a command cannot be taken now: HTTP 503
    │   ├── NotReadyError        the view is still restoring or catching up
    │   ├── AppendError          the event was not acknowledged in time
    │   └── OrderInDoubtError    an unacknowledged event of the order may still appear
    └── SupervisorError        (supervisor) ``es-orders up`` could not start or keep a part

Kept apart on purpose: ``domain.DomainError`` (a command the order's rules refuse: an
answer to a client, in the pure domain) and ``http.ProblemError`` (an HTTP answer).

Add a subclass here, and to this tree, when a new kind of failure needs its own handling.
"""

from __future__ import annotations


class EsOrdersError(Exception):
    """Root of every exception es-orders raises on purpose."""


class BrokerError(EsOrdersError):
    """A Kafka broker (started by es-orders, or yours) cannot be started, reached, or refused."""


class TopicConfigError(EsOrdersError):
    """A topic cannot be created, or exists with a shape es-orders cannot use."""
