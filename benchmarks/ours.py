"""Fold throughput and restore of the query service (``es-orders query`` as a process)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from benchmarks.children import read_restore_log, stopping
from benchmarks.context import Bench
from benchmarks.errors import BenchError
from benchmarks.topics import TopicSet, produce
from es_orders.workload import encoded, order_events

log = logging.getLogger(__name__)


def measure_fold(bench: Bench) -> TopicSet:
    """Produce the workload, then start the service and time its fold from its own clock.

    Everything is produced before the service starts, so the measure is of the fold
    alone: first record consumed to last batch checkpointed (changelog acknowledged,
    SQLite committed), as the service's /stats reports them.
    """
    options = bench.options
    topics = bench.topics("fold")
    events = produce(
        bench.bootstrap_servers,
        topics.events,
        encoded(order_events(options.orders, options.events)),
    )
    service = bench.query_service(
        topics, f"bench-{bench.run_id}-fold", bench.work_dir / "fold-state", "query-fold"
    )
    with stopping(service):
        stats = service.wait_stats(
            "all events folded",
            lambda s: s["consumed"] >= events,
            bench.wait_seconds(events),
        )
    seconds = stats["last_checkpoint_at"] - stats["first_record_at"]
    if seconds <= 0:
        raise BenchError(f"the fold of {events} events took no measurable time: use more")
    rate = stats["consumed"] / seconds
    log.info("fold measured events=%d seconds=%.2f events_per_s=%.0f", events, seconds, rate)
    results = bench.results
    results.figures["fold.events_per_s"] = rate
    results.details.update(
        {
            "fold.events": events,
            "fold.orders": options.orders,
            "fold.seconds": seconds,
            "fold.batches": stats["batches"],
            "fold.changelog_records": stats["changelog_records"],
            "fold.dead_letters": stats["dead_letters"],
            "fold.duplicates": stats["duplicates"],
            "fold.start_to_first_record_s": stats["first_record_at"] - service.started_at,
        }
    )
    if stats["dead_letters"] or stats["duplicates"] or stats["gaps"]:
        results.note(f"the fold workload was not clean: {stats}")
    return topics


def measure_restore(bench: Bench) -> TopicSet:
    """Build a changelog of ``restore_orders`` orders, then restart cold and warm.

    Cold: the state directory is deleted, so every partition is rebuilt from the
    changelog. Warm: the directory is kept, so only the changelog's tail is read.
    """
    orders = bench.options.restore_orders
    topics = bench.topics("restore")
    # Each order created once: the changelog ends up with exactly one row per order.
    produce(bench.bootstrap_servers, topics.events, encoded(order_events(orders, orders, 11)))
    application_id = f"bench-{bench.run_id}-restore"
    state_dir = bench.work_dir / "restore-state"
    builder = bench.query_service(topics, application_id, state_dir, "query-restore-build")
    with stopping(builder):
        builder.wait_stats(
            "the changelog built",
            lambda s: s["consumed"] >= orders and s["changelog_records"] >= orders,
            bench.wait_seconds(orders),
        )
    if builder.returncode != 0:
        bench.results.note(f"the query service exited with {builder.returncode} on SIGTERM")
    shutil.rmtree(state_dir)
    _restart(bench, topics, application_id, state_dir, "cold")
    _restart(bench, topics, application_id, state_dir, "warm")
    restored = bench.results.figures.get("restore.cold.restored_records", 0)
    if restored != orders:
        bench.results.note(f"cold restart restored {restored:.0f} records, not {orders}")
    for kind in ("cold", "warm"):
        consumed = bench.results.details[f"restore.{kind}.consumed"]
        if consumed:
            bench.results.note(f"{kind} restart replayed {consumed:.0f} events: not a restore")
    return topics


def _restart(
    bench: Bench, topics: TopicSet, application_id: str, state_dir: Path, kind: str
) -> None:
    service = bench.query_service(topics, application_id, state_dir, f"query-restore-{kind}")
    with stopping(service):
        ready_at = service.wait_ready(bench.wait_seconds(bench.options.restore_orders))
        stats = service.stats()
    logged = read_restore_log(service.log_text())
    assigned_at = logged.assigned_at or service.started_at
    prefix = f"restore.{kind}"
    ready = {
        f"{prefix}.ready_s": ready_at - service.started_at,
        f"{prefix}.ready_after_assignment_s": ready_at - assigned_at,
    }
    details = {
        f"{prefix}.join_s": assigned_at - service.started_at,
        f"{prefix}.consumed": stats["consumed"],
        f"{prefix}.logged_restored_records": logged.restored_records,
    }
    restore = {
        f"{prefix}.restore_s": logged.restore_seconds,
        f"{prefix}.restored_records": stats["restored_records"],
    }
    results = bench.results
    results.figures.update(ready)
    # A warm restart may rightly restore nothing: its restore counts explain, not measure.
    (results.figures if kind == "cold" else results.details).update(restore)
    results.details.update(details)
    log.info("restart measured kind=%s %s", kind, {**ready, **restore, **details})
