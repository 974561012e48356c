"""The figures of a run: a rich table with the issue's goals, a JSON file, the last line."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.context import BenchOptions, Results


@dataclass(frozen=True, slots=True)
class Figure:
    """A measure, how to show it, and the goal of issue 5 for this 2-core machine."""

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


FIGURES = (
    Figure("fold.events_per_s", "Fold throughput", "events/s", ">= 200,000", at_least=200_000),
    Figure("fold.vs_quixstreams", "  vs quixstreams", "x", ">= 3.5x", at_least=3.5),
    Figure("quix.fold.events_per_s", "quixstreams fold throughput", "events/s"),
    Figure("restore.cold.restore_s", "Restore, state dir deleted", "s", "<= 2 s", at_most=2.0),
    Figure("restore.cold.restored_records", "  records restored", "records"),
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

# Counts that explain the figures; zero is often the right answer here.
CHECKS = (
    ("restore.cold.consumed", "events consumed on the cold restart (0: restored, not replayed)"),
    ("restore.warm.consumed", "events consumed on the warm restart"),
    ("restore.warm.restored_records", "changelog records read on the warm restart"),
    ("restore.cold.join_s", "group join on restart, s"),
    ("latency.preloaded_events", "events preloaded for the latency phase"),
    ("latency.by_id.folded_during_window", "events folded during the GET-by-id window"),
    ("latency.by_id.errors", "GET /orders/{id} errors"),
    ("latency.list.errors", "GET /orders?limit=100 errors"),
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
        "goals": {f.key: f.goal for f in FIGURES if f.goal},
        "details": results.details,
        "notes": results.notes,
        "options": asdict(options),
        "machine": machine(),
        "broker": results.broker,
        "error": error,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def _shown(value: float, unit: str) -> str:
    if unit in ("events/s", "records"):
        return f"{value:,.0f}"
    if unit == "x":
        return f"{value:.1f}"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _count(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.3f}"


def print_table(results: Results, console: Console) -> None:
    table = Table(title=f"es-orders benchmark on {results.broker or 'an unknown broker'}")
    table.add_column("Measure")
    table.add_column("Value", justify="right")
    table.add_column("Unit")
    table.add_column("Goal")
    table.add_column("Met")
    for figure in FIGURES:
        value = results.figures.get(figure.key)
        if value is None:
            table.add_row(figure.label, "-", figure.unit, figure.goal, "")
            continue
        met = figure.met(value)
        mark = "" if met is None else ("[green]yes[/]" if met else "[red]no[/]")
        table.add_row(figure.label, _shown(value, figure.unit), figure.unit, figure.goal, mark)
    console.print(table)
    checks = Table(title="Checks")
    checks.add_column("What")
    checks.add_column("Value", justify="right")
    for key, label in CHECKS:
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


def last_line(results: Results) -> str:
    """The line a script can grep: ``fold throughput: <N> events/s, <R>x quixstreams``."""
    rate = results.figures.get("fold.events_per_s", 0.0)
    ratio = results.figures.get("fold.vs_quixstreams", 0.0)
    return f"fold throughput: {rate:.0f} events/s, {ratio:.1f}x quixstreams"
