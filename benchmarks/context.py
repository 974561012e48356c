"""What every phase shares: the broker address, the work directory, the options, the figures."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.children import QueryProcess, service_env
from benchmarks.topics import TopicSet, create_topic_set
from es_orders.brokers import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Workload:
    """Events each contender folds in turn: the same records (one generator, one seed)."""

    name: str  # narrow (many events per order) or wide (few per order, many orders)
    events: int
    orders: int
    seed: int


def fold_key(workload: Workload, workers: int) -> str:
    """The prefix of one fold run's figures, e.g. ``fold.narrow.workers_2``."""
    return f"fold.{workload.name}.workers_{workers}"


# The phases of a run, in the order they run; ``--only`` picks some of them.
PHASES = (
    "fold",
    "memory",
    "restore",
    "query-latency",
    "forwarded-latency",
    "command-to-visible",
    "groups",
    "commands",
)
# Which phase measures a figure or a detail, by the start of its key (the longest
# prefix that matches wins).
_PHASE_OF_PREFIX = {
    "fold.": "fold",
    "quix.fold.": "fold",
    "memory.": "memory",
    "restore.": "restore",
    "quix.restore.": "restore",
    "latency.": "query-latency",
    "latency.forwarded.": "forwarded-latency",
    "latency.local.": "forwarded-latency",
    "command.": "command-to-visible",
    "groups.": "groups",
    "commands.": "commands",
}


def phase_of(key: str) -> str | None:
    """The phase that measures the figure or detail ``key`` (None: none of them)."""
    matches = [prefix for prefix in _PHASE_OF_PREFIX if key.startswith(prefix)]
    return _PHASE_OF_PREFIX[max(matches, key=len)] if matches else None


def memory_key(orders: int) -> str:
    """The prefix of one memory run's figures, e.g. ``memory.orders_200000``."""
    return f"memory.orders_{orders}"


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """The knobs of one run; ``quick()`` is the smoke test's tiny version."""

    events: int = 300_000
    orders: int = 10_000
    wide_events: int = 1_000_000
    wide_orders: int = 200_000
    # Each workload is folded by one fold worker, then by this many (es-orders query
    # --workers); the other phases' query services run with this many too.
    workers: int = 2
    # es-orders query --cache-mb (MiB) of every query service the bench starts.
    cache_mb: int = 64
    # The memory phase folds this many orders (one event each), one run per count.
    memory_orders: tuple[int, ...] = (200_000, 2_000_000)
    restore_orders: int = 200_000
    # Four, not the services' default three: two fold workers then hold two each, as
    # a team running two workers would lay its topics out (three split 2:1).
    partitions: int = 4
    latency_seconds: float = 5.0
    by_id_rate: float = 500.0
    list_rate: float = 100.0
    # GET /orders/{id} to one of two query instances, forwarded to the other (and, the
    # baseline, answered by the first itself); each window lasts ``latency_seconds``.
    forwarded_rate: float = 500.0
    command_seconds: float = 5.0
    command_rate: float = 50.0
    # The latency phase preloads enough events to keep the service folding throughout
    # both windows, sized from the measured fold rate, but never more than this.
    latency_max_events: int = 2_000_000
    # Join, rebalance and leave of a consumer group, this often per group protocol.
    group_trials: int = 5
    # Commands through two command instances (bench/commands.py): each to one of the
    # two at random, on ``commands_orders`` orders created first. A warm-up, then
    # ``commands_seconds`` at ``commands_rate``; then open-loop steps of
    # ``commands_step_seconds`` each at these rates, up to the first that fails.
    commands_orders: int = 1_000
    commands_rate: float = 200.0
    # At 200 commands/s a freshly started broker (``--only commands``) used 0.9 of a core
    # for the first 30-40 s, then 0.3-0.4 once its JIT had compiled the paths commands
    # take (after a 30 s warm-up it still used 0.6 in the window); the p99 went from
    # 110-150 ms to 60-113 ms. Measured once warm, as when the phase follows the others.
    commands_warm_up_seconds: float = 60.0
    commands_seconds: float = 15.0
    commands_step_rates: tuple[float, ...] = (
        100.0,
        150.0,
        200.0,
        300.0,
        500.0,
        750.0,
        1_000.0,
        1_500.0,
        2_000.0,
        2_500.0,
        3_000.0,
        4_000.0,
    )
    commands_step_seconds: float = 8.0
    engine: Engine = "kafka"
    # The phases to run (``--only``), in PHASES' order; all of them by default.
    phases: tuple[str, ...] = PHASES

    @classmethod
    def quick(cls) -> BenchOptions:
        return cls(
            events=3_000,
            orders=300,
            wide_events=10_000,
            wide_orders=2_000,
            memory_orders=(2_000, 20_000),
            restore_orders=2_000,
            latency_seconds=1.0,
            command_seconds=1.0,
            latency_max_events=30_000,
            group_trials=1,
            commands_orders=100,
            commands_warm_up_seconds=0.5,
            commands_seconds=1.0,
            # Low enough to pass on a busy machine: the smoke test wants a figure, not speed.
            commands_step_rates=(10.0, 25.0),
            commands_step_seconds=2.0,
        )

    def workloads(self) -> tuple[Workload, Workload]:
        return (
            Workload("narrow", self.events, self.orders, 7),
            Workload("wide", self.wide_events, self.wide_orders, 19),
        )

    def validate(self) -> None:
        if self.events < self.orders or self.orders < 1:
            raise ValueError("--events must be at least --orders, and --orders at least 1")
        if self.wide_events < self.wide_orders or self.wide_orders < 1:
            raise ValueError(
                "--wide-events must be at least --wide-orders, and --wide-orders at least 1"
            )
        if self.restore_orders < 1 or self.partitions < 1:
            raise ValueError("--restore-orders and --partitions must be at least 1")
        if not 2 <= self.workers <= self.partitions:
            raise ValueError(
                f"--workers must be from 2 to --partitions ({self.partitions}): one worker "
                f"is always measured beside it, and a worker without a partition folds "
                f"nothing (got {self.workers})"
            )
        if self.cache_mb < 1:
            raise ValueError(f"--cache-mb must be at least 1 (got {self.cache_mb})")
        if not self.memory_orders or min(self.memory_orders) < 1:
            raise ValueError("--memory-orders must be given at least once, each at least 1")
        if len(set(self.memory_orders)) != len(self.memory_orders):
            raise ValueError(f"--memory-orders are repeated: {list(self.memory_orders)}")
        if min(self.latency_seconds, self.command_seconds) <= 0:
            raise ValueError("phase durations must be positive")
        if self.group_trials < 1:
            raise ValueError("group trials must be at least 1")
        unknown = [phase for phase in self.phases if phase not in PHASES]
        if unknown or not self.phases:
            raise ValueError(
                f"--only takes phases among {', '.join(PHASES)} (got {', '.join(unknown)})"
            )
        if self.commands_orders < 1 or min(self.commands_rate, self.commands_seconds) <= 0:
            raise ValueError("the commands phase needs orders, a rate and a duration")
        steps = self.commands_step_rates
        if not steps or min(steps) <= 0 or list(steps) != sorted(set(steps)):
            raise ValueError(f"command step rates must rise, each positive (got {steps})")
        if self.commands_step_seconds <= 0 or self.commands_warm_up_seconds < 0:
            raise ValueError("command step and warm-up durations must be positive")

    def runs(self, phase: str) -> bool:
        """Whether this run measures ``phase`` (one of PHASES)."""
        return phase in self.phases


@dataclass(slots=True)
class Results:
    """``figures`` are the measures (each must come out positive); ``details`` explain them."""

    figures: dict[str, float] = field(default_factory=dict)
    details: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    broker: str = ""  # which engine and version the run measured on
    # Figures measured, but not as they claim to be (e.g. some requests failed, and the
    # percentiles are of the rest only): key -> why. The report marks them invalid.
    invalid: dict[str, str] = field(default_factory=dict)

    def note(self, text: str) -> None:
        log.warning("bench note: %s", text)
        self.notes.append(text)

    def flag(self, keys: list[str], reason: str) -> None:
        """Mark the figures ``keys`` invalid for ``reason`` (a note says so too)."""
        for key in keys:
            self.invalid.setdefault(key, reason)
        self.note(f"invalid {', '.join(keys)}: {reason}")


@dataclass(slots=True)
class Bench:
    bootstrap_servers: str
    work_dir: Path
    options: BenchOptions
    run_id: str
    results: Results = field(default_factory=Results)
    # ES_ORDERS_KAFKA__* the broker's engine wants its clients to have (Broker.client_env).
    client_env: dict[str, str] = field(default_factory=dict)
    # The broker's processes (Broker.pids), for the CPU they use during a measure.
    broker_pids: list[int] = field(default_factory=list)

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
        self,
        topics: TopicSet,
        application_id: str,
        state_dir: Path,
        name: str,
        workers: int | None = None,
        **extra_env: str,
    ) -> QueryProcess:
        """``es-orders query`` with ``workers`` fold workers (default: ``options.workers``)
        and ``ES_ORDERS_*`` settings from ``extra_env`` on top."""
        workers = self.options.workers if workers is None else workers
        env = {**self.env(topics, application_id, state_dir), **extra_env}
        log_path = self.work_dir / f"{name}.log"
        return QueryProcess(env, log_path, workers, self.options.cache_mb, name)

    def query_instances(
        self,
        topics: TopicSet,
        application_id: str,
        name: str,
        count: int,
        workers: int | None = None,
    ) -> list[QueryProcess]:
        """``count`` instances of one query application: one consumer group and members
        topic, each with its own port, state directory (``<name>-<i>-state``) and log.

        They start together; a failure to start one stops those already started.
        """
        instances: list[QueryProcess] = []
        try:
            for index in range(count):
                label = f"{name}-{index}"
                state_dir = self.work_dir / f"{label}-state"
                instances.append(
                    self.query_service(topics, application_id, state_dir, label, workers)
                )
        except BaseException:
            for instance in reversed(instances):
                instance.stop()
            raise
        return instances

    def wait_seconds(self, records: int) -> float:
        """A generous bound for folding ``records``: no honest run comes near it."""
        return 60.0 + records / 5_000
