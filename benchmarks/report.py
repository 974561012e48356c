"""The figures of a run: a rich table with the issue's goals, a JSON file, the last line."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.commands import STEP_P99_MS, latency_key
from benchmarks.context import PHASES, BenchOptions, Results, fold_key, memory_key, phase_of


@dataclass(frozen=True, slots=True)
class Figure:
    """A measure, how to show it, and the issue's goal for it on this 2-core machine."""

    key: str
    label: str
    unit: str
    goal: str = ""
    at_least: float | None = None
    at_most: float | None = None

    def met(self, value: float) -> bool | None:
        if self.at_least is not None:
            return value >= self.at_least
        if self.at_most is not None:
            return value <= self.at_most
        return None


# The goals for this 2-core machine: events/s with the measured worker count,
# and one worker's throughput over quixstreams'.
FOLD_GOALS = {"narrow": (200_000, 3.5), "wide": (100_000, 3.0)}
# Folding while keeping every event (the default) against latest states only.
HISTORY_RATIO_GOAL = 0.8
# What a fold worker may hold besides its cache, whatever the number of orders: the
# interpreter and its modules, librdkafka's fetch queue (16 MiB) and the states of a
# batch until its checkpoint, SQLite's page cache. The bench's yardstick for the memory
# rows: test_fold_workers.py measured 134 MiB at peak with an 8 MiB cache.
MEMORY_OVERHEAD_MIB = 160
RESTORE_GOAL_S = 3.0
# Two command instances, each command to either (bench/commands.py).
COMMAND_P99_GOAL_MS = 30.0
COMMAND_RATE_GOAL = 2_000

LATER_FIGURES = (
    Figure("restore.cold.ready_s", "  ready, from process start", "s", "(incl. group join)"),
    Figure("restore.cold.ready_after_assignment_s", "  ready, from assignment", "s"),
    Figure("quix.restore.recovery_s", "quixstreams recovery, state deleted", "s"),
    Figure("quix.restore.ready_s", "  sentinel processed, from start", "s", "(incl. join)"),
    Figure("restore.warm.ready_s", "Warm restart ready, from start", "s", "(incl. group join)"),
    Figure(
        "restore.warm.ready_after_assignment_s",
        "  ready, from assignment",
        "s",
        "<= 1 s + join",
        at_most=1.0,
    ),
    Figure("latency.by_id.p50_ms", "GET /orders/{id} p50, folding", "ms"),
    Figure("latency.by_id.p99_ms", "GET /orders/{id} p99, folding", "ms", "<= 5 ms", at_most=5.0),
    Figure("latency.by_id.max_ms", "GET /orders/{id} max, folding", "ms"),
    Figure("latency.list.p50_ms", "GET /orders?limit=100 p50", "ms"),
    Figure("latency.list.p99_ms", "GET /orders?limit=100 p99", "ms"),
    Figure("latency.list.max_ms", "GET /orders?limit=100 max", "ms"),
    # Two query instances, idle; all GETs to one of them (bench/interactive.py).
    Figure("latency.forwarded.p50_ms", "Forwarded GET /orders/{id} p50, idle", "ms"),
    Figure(
        "latency.forwarded.p99_ms",
        "  p99, forwarded to the other instance",
        "ms",
        "<= 10 ms",
        at_most=10.0,
    ),
    Figure("latency.forwarded.max_ms", "  max, forwarded", "ms"),
    Figure("latency.local.p50_ms", "  p50, local (same instance, idle)", "ms"),
    Figure("latency.local.p99_ms", "  p99, local", "ms"),
    Figure("latency.local.max_ms", "  max, local", "ms"),
    Figure("latency.forwarded.p50_vs_local", "  forwarded over local, p50", "x"),
    Figure("latency.forwarded.p99_vs_local", "  forwarded over local, p99", "x"),
    Figure("command.visible.p50_ms", "Command to visible p50", "ms"),
    Figure("command.visible.p99_ms", "Command to visible p99", "ms", "<= 100 ms", at_most=100.0),
    Figure("command.visible.max_ms", "Command to visible max", "ms"),
    # Consumer groups on a 3-partition topic, medians (bench/groups.py).
    Figure("groups.classic.join_s", "Group join, classic protocol", "s", "(as the services)"),
    Figure("groups.classic.rebalance_s", "  2nd member joins: both hold some", "s"),
    Figure("groups.classic.leave_s", "  2nd member closes: 1st holds all", "s"),
    Figure("groups.consumer.join_s", "Group join, consumer protocol", "s", "(KIP-848)"),
    Figure("groups.consumer.rebalance_s", "  2nd member joins: both hold some", "s"),
    Figure("groups.consumer.leave_s", "  2nd member closes: 1st holds all", "s"),
)


def figures_for(options: BenchOptions) -> tuple[Figure, ...]:
    """Every figure a run with ``options`` measures (of the phases it runs), in the
    table's order."""
    return tuple(f for f in _all_figures(options) if phase_of(f.key) in options.phases)


def _all_figures(options: BenchOptions) -> tuple[Figure, ...]:
    restore = (
        Figure(
            "restore.cold.restore_s",
            f"Restore {options.restore_orders:,} orders, state dir deleted",
            "s",
            f"<= {RESTORE_GOAL_S:g} s",
            at_most=RESTORE_GOAL_S,
        ),
        Figure("restore.cold.restored_records", "  records restored", "records"),
    )
    return (
        *_fold_figures(options),
        *_memory_figures(options),
        *restore,
        *LATER_FIGURES,
        *_command_figures(options),
    )


def _command_figures(options: BenchOptions) -> Iterator[Figure]:
    prefix, rate = latency_key(options.commands_rate), options.commands_rate
    yield Figure(f"{prefix}.p50_ms", f"Command p50 at {rate:g}/s, 2 command instances", "ms")
    yield Figure(
        f"{prefix}.p99_ms",
        "  p99 (each to either instance: ~half forwarded)",
        "ms",
        f"<= {COMMAND_P99_GOAL_MS:g} ms",
        at_most=COMMAND_P99_GOAL_MS,
    )
    yield Figure(
        "commands.max_rate",
        f"  most commands/s with p99 <= {STEP_P99_MS:g} ms",
        "commands/s",
        f">= {COMMAND_RATE_GOAL:,}",
        at_least=COMMAND_RATE_GOAL,
    )
    yield Figure("commands.max_rate_p99_ms", "  p99 at that rate", "ms")


def _fold_figures(options: BenchOptions) -> Iterator[Figure]:
    workers = options.workers
    for workload in options.workloads():
        rate_goal, ratio_goal = FOLD_GOALS[workload.name]
        one, many = fold_key(workload, 1), fold_key(workload, workers)
        title = f"Fold, {workload.name}: {workload.events:,} events, {workload.orders:,} orders"
        yield Figure(f"{one}.events_per_s", f"{title}; 1 worker", "events/s")
        yield Figure(
            f"{one}.history_off.events_per_s", "  1 worker, ES_ORDERS_HISTORY=off", "events/s"
        )
        yield Figure(
            f"fold.{workload.name}.history_vs_off",
            "  1 worker keeping history vs off",
            "x",
            f">= {HISTORY_RATIO_GOAL:g}x",
            at_least=HISTORY_RATIO_GOAL,
        )
        yield Figure(
            f"{many}.events_per_s",
            f"  {workers} workers",
            "events/s",
            f">= {rate_goal:,}",
            at_least=rate_goal,
        )
        yield Figure(f"quix.fold.{workload.name}.events_per_s", "  quixstreams", "events/s")
        yield Figure(
            f"fold.{workload.name}.vs_quixstreams",
            "  1 worker vs quixstreams",
            "x",
            f">= {ratio_goal:g}x",
            at_least=ratio_goal,
        )
        yield Figure(f"{one}.worker_0.peak_rss_mib", "  peak RSS, 1 worker", "MiB")
        yield Figure(
            f"{one}.history_off.worker_0.peak_rss_mib",
            "  peak RSS, 1 worker, ES_ORDERS_HISTORY=off",
            "MiB",
        )
        for index in range(workers):
            label = f"  peak RSS, {workers} workers: worker {index}"
            yield Figure(f"{many}.worker_{index}.peak_rss_mib", label, "MiB")


def _memory_figures(options: BenchOptions) -> Iterator[Figure]:
    cache, bound = options.cache_mb, options.cache_mb + MEMORY_OVERHEAD_MIB
    for n, orders in enumerate(sorted(options.memory_orders)):
        title = f"Peak RSS of 1 fold worker, cache {cache} MiB: " if n == 0 else "  "
        yield Figure(
            f"{memory_key(orders)}.worker_0.peak_rss_mib",
            f"{title}{orders:,} orders",
            "MiB",
            f"<= {cache} + {MEMORY_OVERHEAD_MIB}",
            at_most=bound,
        )


def checks_for(options: BenchOptions) -> tuple[tuple[str, str], ...]:
    """Counts that explain the figures (key, label); zero is often the right answer here."""
    checks: list[tuple[str, str]] = []
    workers = options.workers
    for workload in options.workloads():
        many = fold_key(workload, workers)
        what = f"{workload.name} fold, {workers} workers"
        checks.append((f"{many}.restored_records", f"{what}: changelog records restored"))
        checks.append((f"{many}.start_to_settled_s", f"{what}: s from start to group settled"))
        checks += [
            (f"{many}.worker_{index}.partitions", f"{what}: partitions of worker {index}")
            for index in range(workers)
        ]
    for orders in sorted(options.memory_orders):
        key = f"{memory_key(orders)}.worker_0"
        checks.append((f"{key}.cache_entries", f"memory, {orders:,} orders: orders cached"))
        checks.append((f"{key}.cache_mib", f"memory, {orders:,} orders: cache, MiB"))
    checks.append(("memory.growth_mib", "memory: peak RSS, most orders minus fewest, MiB"))
    checks += _command_checks(options)
    return tuple(
        (key, label) for key, label in (*checks, *LATER_CHECKS) if phase_of(key) in options.phases
    )


def _command_checks(options: BenchOptions) -> list[tuple[str, str]]:
    prefix, rate = latency_key(options.commands_rate), f"{options.commands_rate:g}/s"
    return [
        ("commands.orders", "commands: orders changed"),
        ("commands.partitions_of_instance_0", "commands: partitions instance 0 held (of both)"),
        (f"{prefix}.requests", f"commands at {rate}: sent"),
        (f"{prefix}.status_200", f"commands at {rate}: answered 200"),
        (f"{prefix}.errors", f"commands at {rate}: not 2xx or unanswered (must be 0)"),
        (f"{prefix}.forwarded_share", f"commands at {rate}: share forwarded"),
        (f"{prefix}.achieved_per_s", f"commands at {rate}: 2xx a second"),
        (f"{prefix}.generator_lag_p99_ms", f"commands at {rate}: generator late p99, ms"),
        (f"{prefix}.cpu.generator_cores", f"commands at {rate}: cores, load generator"),
        (f"{prefix}.cpu.command_0_cores", f"commands at {rate}: cores, instance 0"),
        (f"{prefix}.cpu.command_1_cores", f"commands at {rate}: cores, instance 1"),
        (f"{prefix}.cpu.broker_cores", f"commands at {rate}: cores, broker"),
        (f"{prefix}.cpu.other_cores", f"commands at {rate}: cores, anything else"),
        (f"{prefix}.cpu.machine_cores", f"commands at {rate}: cores, machine (all)"),
        ("commands.max_rate.achieved_per_s", "commands, highest step passed: 2xx a second"),
        ("commands.max_rate.first_failed_rate", "commands: first step failed, offered /s"),
    ]


LATER_CHECKS = (
    ("restore.cold.consumed", "events consumed on the cold restart (0: restored, not replayed)"),
    ("restore.warm.consumed", "events consumed on the warm restart"),
    ("restore.warm.restored_records", "changelog records read on the warm restart"),
    ("restore.cold.join_s", "group join on restart, s"),
    ("latency.preloaded_events", "events preloaded for the latency phase"),
    ("latency.by_id.folded_during_window", "events folded during the GET-by-id window"),
    ("latency.by_id.errors", "GET /orders/{id} errors"),
    ("latency.list.errors", "GET /orders?limit=100 errors"),
    ("latency.forwarded.errors", "forwarded GET errors (incl. misrouted)"),
    ("latency.forwarded.misrouted", "forwarded GETs not Served-By the owner"),
    ("latency.local.errors", "local GET errors (incl. misrouted)"),
    ("latency.local.misrouted", "local GETs not Served-By the instance asked"),
    ("latency.forwarded.requests", "forwarded GETs sent"),
    ("latency.forwarded.partitions_of_other", "partitions the other instance held"),
    ("latency.forwarded.folded_during_windows", "events folded during the idle windows"),
    ("command.acknowledged.p99_ms", "command acknowledged (acks=all) p99, ms"),
    ("command.visible.errors", "commands failed or not visible within 10 s"),
    ("groups.trials", "group trials per protocol (group figures are medians)"),
    ("groups.broker.consumer_heartbeat_ms", "broker group.consumer.heartbeat.interval.ms"),
    ("groups.broker.consumer_session_timeout_ms", "broker group.consumer.session.timeout.ms"),
    ("groups.classic.rebalance_revoked", "classic: partitions the 1st member gave up on a join"),
    ("groups.consumer.rebalance_revoked", "consumer: partitions the 1st member gave up"),
    ("groups.classic.rebalance_idle_s", "classic: s the 1st member held none on a join"),
    ("groups.consumer.rebalance_idle_s", "consumer: s the 1st member held none on a join"),
)


def machine() -> dict[str, Any]:
    """What the figures depend on: the CPU, how many cores, memory, Python."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    memory_gb = 0.0
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory_gb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return {
        "cpu": model or platform.machine(),
        "cores": os.cpu_count() or 0,
        "memory_gb": round(memory_gb, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }


def write_json(path: Path, options: BenchOptions, results: Results, error: str | None) -> None:
    document = {
        "figures": results.figures,
        "goals": {f.key: f.goal for f in figures_for(options) if f.goal},
        "invalid": results.invalid,
        "details": results.details,
        "notes": results.notes,
        "options": asdict(options),
        "machine": machine(),
        "broker": results.broker,
        "error": error,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def _shown(value: float, unit: str) -> str:
    if unit in ("events/s", "records", "commands/s"):
        return f"{value:,.0f}"
    if unit == "x":
        return f"{value:.1f}"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _count(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.3f}"


def print_table(results: Results, options: BenchOptions, console: Console) -> None:
    table = Table(title=f"es-orders benchmark on {results.broker or 'an unknown broker'}")
    table.add_column("Measure")
    table.add_column("Value", justify="right")
    table.add_column("Unit")
    table.add_column("Goal")
    table.add_column("Met")
    for figure in figures_for(options):
        value = results.figures.get(figure.key)
        if value is None:
            table.add_row(figure.label, "-", figure.unit, figure.goal, "")
            continue
        met = figure.met(value)
        mark = "" if met is None else ("[green]yes[/]" if met else "[red]no[/]")
        if figure.key in results.invalid:
            mark = "[red]invalid[/]"  # the reason is in the notes
        table.add_row(figure.label, _shown(value, figure.unit), figure.unit, figure.goal, mark)
    console.print(table)
    checks = Table(title="Checks")
    checks.add_column("What")
    checks.add_column("Value", justify="right")
    for key, label in checks_for(options):
        value = results.details.get(key)
        checks.add_row(label, "-" if value is None else _count(value))
    console.print(checks)
    for note in results.notes:
        console.print(f"[yellow]note:[/] {note}")
    host = machine()
    console.print(
        f"machine: {host['cores']} cores ({host['cpu']}), {host['memory_gb']} GB, "
        f"{host['os']}, Python {host['python']}; broker, services and bench all on it"
    )
    if options.runs("commands"):
        console.print(
            "commands: the load generator runs on the same cores as both command instances "
            "and the broker, and takes its share of them (cores each used: Checks)"
        )


def last_line(results: Results, options: BenchOptions) -> str:
    """The line a script can grep, on the narrow workload.

    ``fold throughput: <N> events/s, <R>x quixstreams; <M> events/s with <W> workers``:
    N with one fold worker, R = N over quixstreams', M with ``--workers`` W. A run
    without the fold phase (``--only``) ends with ``_partial_line`` instead.
    """
    narrow, workers = options.workloads()[0], options.workers
    figures = results.figures
    if not options.runs("fold"):
        return _partial_line(results, options)
    one = figures.get(f"{fold_key(narrow, 1)}.events_per_s", 0.0)
    ratio = figures.get(f"fold.{narrow.name}.vs_quixstreams", 0.0)
    many = figures.get(f"{fold_key(narrow, workers)}.events_per_s", 0.0)
    return (
        f"fold throughput: {one:.0f} events/s, {ratio:.1f}x quixstreams; "
        f"{many:.0f} events/s with {workers} workers"
    )


def _partial_line(results: Results, options: BenchOptions) -> str:
    """The last line of a run without the fold phase: which phases it ran, and for the
    commands phase ``commands: p99 <P> ms at <R>/s; <M>/s with p99 <= 100 ms``."""
    figures = results.figures
    line = f"phases run: {', '.join(p for p in PHASES if options.runs(p))}"
    if options.runs("commands"):
        prefix = latency_key(options.commands_rate)
        p99 = figures.get(f"{prefix}.p99_ms", 0.0)
        most = figures.get("commands.max_rate", 0.0)
        line = (
            f"commands: p99 {p99:.1f} ms at {options.commands_rate:g}/s; "
            f"{most:.0f}/s with p99 <= {STEP_P99_MS:g} ms ({line})"
        )
    return line
