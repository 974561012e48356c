"""What every phase shares: the broker address, the work directory, the options, the figures."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.children import ServiceProcess, service_env
from benchmarks.topics import TopicSet, create_topic_set
from es_orders.brokers import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """The knobs of one run; ``quick()`` is the smoke test's tiny version."""

    events: int = 300_000
    orders: int = 10_000
    restore_orders: int = 100_000
    partitions: int = 3
    latency_seconds: float = 5.0
    by_id_rate: float = 500.0
    list_rate: float = 100.0
    command_seconds: float = 5.0
    command_rate: float = 50.0
    # The latency phase preloads enough events to keep the service folding throughout
    # both windows, sized from the measured fold rate, but never more than this.
    latency_max_events: int = 2_000_000
    # Join, rebalance and leave of a consumer group, this often per group protocol.
    group_trials: int = 5
    engine: Engine = "kafka"

    @classmethod
    def quick(cls) -> BenchOptions:
        return cls(
            events=3_000,
            orders=300,
            restore_orders=2_000,
            latency_seconds=1.0,
            command_seconds=1.0,
            latency_max_events=30_000,
            group_trials=1,
        )

    def validate(self) -> None:
        if self.events < self.orders or self.orders < 1:
            raise ValueError("--events must be at least --orders, and --orders at least 1")
        if self.restore_orders < 1 or self.partitions < 1:
            raise ValueError("--restore-orders and --partitions must be at least 1")
        if min(self.latency_seconds, self.command_seconds) <= 0:
            raise ValueError("phase durations must be positive")
        if self.group_trials < 1:
            raise ValueError("group trials must be at least 1")


@dataclass(slots=True)
class Results:
    """``figures`` are the measures (each must come out positive); ``details`` explain them."""

    figures: dict[str, float] = field(default_factory=dict)
    details: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    broker: str = ""  # which engine and version the run measured on

    def note(self, text: str) -> None:
        log.warning("bench note: %s", text)
        self.notes.append(text)


@dataclass(slots=True)
class Bench:
    bootstrap_servers: str
    work_dir: Path
    options: BenchOptions
    run_id: str
    results: Results = field(default_factory=Results)
    # ES_ORDERS_KAFKA__* the broker's engine wants its clients to have (Broker.client_env).
    client_env: dict[str, str] = field(default_factory=dict)

    def topics(self, phase: str) -> TopicSet:
        """A fresh topic set for ``phase``, created with es-orders' explicit configs."""
        topics = TopicSet(f"bench-{self.run_id}-{phase}", self.options.partitions)
        create_topic_set(self.bootstrap_servers, topics)
        return topics

    def env(self, topics: TopicSet, application_id: str, state_dir: Path) -> dict[str, str]:
        return service_env(
            {
                "ES_ORDERS_BOOTSTRAP_SERVERS": self.bootstrap_servers,
                "ES_ORDERS_EVENTS_TOPIC": topics.events,
                "ES_ORDERS_STATE_TOPIC": topics.state,
                "ES_ORDERS_DLQ_TOPIC": topics.dlq,
                "ES_ORDERS_PARTITIONS": str(topics.partitions),
                "ES_ORDERS_APPLICATION_ID": application_id,
                "ES_ORDERS_COMMAND_APPLICATION_ID": f"{application_id}-command",
                "ES_ORDERS_STATE_DIR": str(state_dir),
                # Nothing else: the services run with their production defaults (session
                # timeout 6 s, so a first group join on Tansu takes about 3 s).
                "ES_ORDERS_LOG_LEVEL": "INFO",
                **self.client_env,
            }
        )

    def query_service(
        self, topics: TopicSet, application_id: str, state_dir: Path, name: str
    ) -> ServiceProcess:
        env = self.env(topics, application_id, state_dir)
        return ServiceProcess("query", env, self.work_dir / f"{name}.log")

    def wait_seconds(self, records: int) -> float:
        """A generous bound for folding ``records``: no honest run comes near it."""
        return 60.0 + records / 5_000
