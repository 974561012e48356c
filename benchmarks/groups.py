"""Consumer group timings: the classic protocol as the services run it, and KIP-848's.

Three moments of a group on a topic of ``partitions`` partitions, each trial in a fresh
group, ``group_trials`` trials per protocol, medians reported:

- join: from ``subscribe`` until a lone member holds every partition;
- rebalance: from a second member's ``subscribe`` until both hold partitions, disjoint
  and covering the topic (so the first gave some up);
- leave: from the second member's ``close`` until the first holds every partition again.

``classic`` runs as ``runtime.clients`` configures the services: eager assignment
(librdkafka's default ``range,roundrobin``), ``session.timeout.ms`` 6000,
``heartbeat.interval.ms`` 1000. ``consumer`` (KIP-848) assigns incrementally, and the
broker sets the heartbeat interval and session timeout (``group.consumer.*``), which a
client may not set: their values on the broker are reported with the figures. A KIP-848
member learns of a change to its assignment at its next heartbeat, so with Kafka's
default ``group.consumer.heartbeat.interval.ms`` (5000) its rebalance and leave move at
that pace, where the classic members here heartbeat every second.

Members are polled from one thread every few milliseconds (rebalance callbacks run in
``poll``); a leaving member closes on a thread of its own, so the survivor is polled
meanwhile. ``python -m benchmarks.groups`` runs this phase alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined,unused-ignore]

from benchmarks.context import Bench, BenchOptions, Results
from benchmarks.errors import BenchError
from es_orders.brokers import choose_engine, start_broker
from es_orders.kafka.admin import TopicSpec, ensure_topics

log = logging.getLogger(__name__)

Protocol = Literal["classic", "consumer"]
PROTOCOLS: tuple[Protocol, ...] = ("classic", "consumer")
MOMENTS = ("join", "rebalance", "leave")
# How the first member fared while the second joined: partitions it gave up (eager: all
# of them, to get some back), and seconds it held none.
REBALANCE_DETAILS = ("rebalance_revoked", "rebalance_idle_s")
# What runtime.clients sets for the services' group members.
CLASSIC_TIMINGS = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
# The protocols a broker's group coordinator speaks (Kafka 4: classic, consumer, streams).
PROTOCOLS_CONFIG = "group.coordinator.rebalance.protocols"
# The broker's settings that govern a KIP-848 group, reported beside its figures.
BROKER_CONFIGS = {
    "group.consumer.heartbeat.interval.ms": "groups.broker.consumer_heartbeat_ms",
    "group.consumer.session.timeout.ms": "groups.broker.consumer_session_timeout_ms",
}
_POLL = 0.005
_TIMEOUT = 60.0


class _Member:
    """One group member; ``held`` follows its rebalance callbacks, eager or incremental."""

    def __init__(self, bootstrap_servers: str, group: str, protocol: Protocol) -> None:
        self.held: set[int] = set()
        self.revoked = 0  # partitions taken away so far (eager: all, on every rebalance)
        self.idle = 0.0  # seconds spent holding nothing, after having held something
        self._idle_since: float | None = None
        self._problem: KafkaError | None = None
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group,
            "group.protocol": protocol,
            "enable.auto.commit": False,
            "error_cb": self._on_error,
            **(CLASSIC_TIMINGS if protocol == "classic" else {}),
        }
        self.consumer = Consumer(config)
        self._closed = False

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._problem = error
        else:
            log.debug("group member error=%s", error)

    def subscribe(self, topic: str) -> None:
        self.consumer.subscribe(
            [topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.held.update(tp.partition for tp in partitions)
        if self.held and self._idle_since is not None:
            self.idle += time.monotonic() - self._idle_since
            self._idle_since = None

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.held.difference_update(tp.partition for tp in partitions)
        self.revoked += len(partitions)
        if not self.held and self._idle_since is None:
            self._idle_since = time.monotonic()

    def poll(self) -> None:
        self.consumer.poll(_POLL)
        if self._problem is not None:
            raise BenchError(f"group member failed: {self._problem}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.consumer.close()


def _until(members: Sequence[_Member], condition: Callable[[], bool], what: str) -> float:
    """Poll ``members`` until ``condition`` holds; the monotonic time it first did."""
    deadline = time.monotonic() + _TIMEOUT
    while True:
        for member in members:
            member.poll()
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            held = [sorted(m.held) for m in members]
            raise BenchError(f"group: {what} not within {_TIMEOUT:.0f} s (held: {held})")


def group_trial(
    bootstrap_servers: str, topic: str, partitions: int, protocol: Protocol, group: str
) -> dict[str, float]:
    """One join, rebalance and leave in a new group: seconds for each (``MOMENTS``), and
    how the rebalance treated the first member (``REBALANCE_DETAILS``)."""
    everything = set(range(partitions))
    first = _Member(bootstrap_servers, group, protocol)
    second: _Member | None = None
    try:
        started = time.monotonic()
        first.subscribe(topic)
        join = _until([first], lambda: first.held == everything, "first join") - started

        joining = second = _Member(bootstrap_servers, group, protocol)

        def shared() -> bool:
            a, b = first.held, joining.held
            return bool(a) and bool(b) and a.isdisjoint(b) and a | b == everything

        started = time.monotonic()
        joining.subscribe(topic)
        rebalance = _until([first, joining], shared, "rebalance on a second member") - started
        revoked, idle = first.revoked, first.idle

        leaving = threading.Thread(target=joining.close, name="group-member-close")
        started = time.monotonic()
        leaving.start()
        leave = _until([first], lambda: first.held == everything, "take-over on leave") - started
        leaving.join(_TIMEOUT)
    finally:
        for member in (second, first):
            if member is not None:
                member.close()
    return {
        "join": join,
        "rebalance": rebalance,
        "leave": leave,
        "rebalance_revoked": revoked,
        "rebalance_idle_s": idle,
    }


def broker_groups(bootstrap_servers: str) -> tuple[set[str], dict[str, float]]:
    """The group protocols the broker enables, and its KIP-848 timings, as it reports
    them. A broker that reports none (Tansu) is taken to speak the classic one only: a
    KIP-848 member there waits for an assignment forever, without an error."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    try:
        broker_id = next(iter(admin.list_topics(timeout=10).brokers))
        resource = ConfigResource("broker", str(broker_id))
        entries = admin.describe_configs([resource], request_timeout=10)[resource].result(15)
    except (KafkaException, StopIteration, TimeoutError) as exc:
        log.warning("cannot read the broker's group configs error=%s", exc)
        return {"classic"}, {}
    enabled = entries.get(PROTOCOLS_CONFIG)
    protocols = {"classic"}
    if enabled is not None and enabled.value:
        protocols = set(re.findall(r"[a-z]+", enabled.value.lower()))
    timings: dict[str, float] = {}
    for name, key in BROKER_CONFIGS.items():
        entry = entries.get(name)
        if entry is not None and entry.value is not None:
            timings[key] = float(entry.value)
    return protocols, timings


def measure_groups(bench: Bench) -> None:
    """Medians of join, rebalance and leave for each protocol, on a topic of their own."""
    topic = f"bench-{bench.run_id}-groups"
    partitions = bench.options.partitions
    config = {"cleanup.policy": "delete", "retention.ms": "-1"}
    ensure_topics(
        {"bootstrap.servers": bench.bootstrap_servers}, [TopicSpec(topic, partitions, 1, config)]
    )
    results = bench.results
    enabled, timings = broker_groups(bench.bootstrap_servers)
    results.details.update(timings)
    trials = bench.options.group_trials
    results.details["groups.trials"] = trials
    for protocol in PROTOCOLS:
        if protocol not in enabled:
            results.note(
                f"group.protocol={protocol} not measured: the broker does not enable it "
                f"({PROTOCOLS_CONFIG}: {', '.join(sorted(enabled))})"
            )
            continue
        samples: dict[str, list[float]] = {key: [] for key in (*MOMENTS, *REBALANCE_DETAILS)}
        for trial in range(trials):
            group = f"bench-{bench.run_id}-groups-{protocol}-{trial}"
            measured = group_trial(bench.bootstrap_servers, topic, partitions, protocol, group)
            log.info("group trial protocol=%s %s", protocol, measured)
            for key, value in measured.items():
                samples[key].append(value)
        for moment in MOMENTS:
            values = samples[moment]
            results.figures[f"groups.{protocol}.{moment}_s"] = statistics.median(values)
            results.details[f"groups.{protocol}.{moment}_max_s"] = max(values)
        for key in REBALANCE_DETAILS:
            results.details[f"groups.{protocol}.{key}"] = statistics.median(samples[key])


def main(argv: Sequence[str] | None = None) -> None:
    """Run the group phase alone, on a running broker or on one started for it."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.groups")
    parser.add_argument("--bootstrap-servers", help="a running broker (default: start Kafka)")
    parser.add_argument("--trials", type=int, default=BenchOptions().group_trials)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    options = BenchOptions(group_trials=args.trials)
    options.validate()
    results = Results()

    def run(bootstrap_servers: str) -> None:
        bench = Bench(bootstrap_servers, Path("."), options, uuid.uuid4().hex[:8], results)
        measure_groups(bench)

    if args.bootstrap_servers:
        run(args.bootstrap_servers)
    else:
        with start_broker(choose_engine("kafka")) as broker:
            results.broker = broker.kind()
            run(broker.bootstrap_servers)
    document = {"figures": results.figures, "details": results.details, "notes": results.notes}
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
