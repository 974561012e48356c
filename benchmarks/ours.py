"""Fold throughput and restore of the query service (``es-orders query`` as a process).

Figures and counts come from the service's ``GET /stats``: the fold's counters, summed
over its fold workers, and each worker's and partition's own (``benchmarks.stats``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from benchmarks.children import QueryProcess, stopping
from benchmarks.context import Bench, Workload, fold_key
from benchmarks.errors import BenchError
from benchmarks.stats import MIB, WorkerStats, partitions_of, settled
from benchmarks.topics import HeldRecords, TopicSet, produce
from es_orders.workload import encoded, order_events

log = logging.getLogger(__name__)


def measure_fold(
    bench: Bench, workload: Workload, workers: int, *, history: bool = True
) -> tuple[float, TopicSet]:
    """Fold ``workload`` with ``workers`` fold workers, timed from the service's own clock.

    The workload goes to a fresh events topic in a transaction left open, so the service
    starts on what looks like an empty topic; once its consumer group has settled (every
    worker holds partitions, each caught up) the transaction is committed and the whole
    backlog shows at once. The measure is so of the fold alone, all workers folding:
    first record consumed (by any worker) to last batch checkpointed (changelog
    acknowledged, SQLite committed, by any worker), as /stats reports them.
    Returns events/s, and the topics (the events committed, for the next contender).
    With ``history`` off (ES_ORDERS_HISTORY=off) the store keeps latest states only.
    """
    key = fold_key(workload, workers) + ("" if history else ".history_off")
    name = f"fold-{workload.name}-w{workers}" + ("" if history else "-history-off")
    topics = bench.topics(name)
    events = encoded(order_events(workload.orders, workload.events, workload.seed))
    with HeldRecords(bench.bootstrap_servers, topics.events, events) as held:
        env = {} if history else {"ES_ORDERS_HISTORY": "off"}
        service = new_service(bench, topics, name, workers, **env)
        with stopping(service):
            service.wait_stats(
                "its consumer group settled",
                lambda s: settled(s, topics.partitions),
                bench.wait_seconds(0),
            )
            released_at = held.release()
            stats = service.wait_stats(
                "all events folded",
                lambda s: s["consumed"] >= held.count,
                bench.wait_seconds(held.count),
            )
            fold_workers = service.worker_stats(stats)
    seconds = stats["last_checkpoint_at"] - stats["first_record_at"]
    if seconds <= 0:
        raise BenchError(f"the fold of {held.count} events took no measurable time: use more")
    rate: float = stats["consumed"] / seconds
    log.info(
        "fold measured workload=%s workers=%d events=%d seconds=%.2f events_per_s=%.0f",
        workload.name,
        workers,
        held.count,
        seconds,
        rate,
    )
    results = bench.results
    results.figures[f"{key}.events_per_s"] = rate
    results.details.update(
        {
            f"fold.{workload.name}.events": held.count,
            f"fold.{workload.name}.orders": workload.orders,
            f"{key}.seconds": seconds,
            f"{key}.batches": stats["batches"],
            f"{key}.changelog_records": stats["changelog_records"],
            f"{key}.restored_records": stats["restored_records"],
            f"{key}.dead_letters": stats["dead_letters"],
            f"{key}.duplicates": stats["duplicates"],
            f"{key}.start_to_settled_s": released_at - service.started_at,
            f"{key}.release_to_first_record_s": stats["first_record_at"] - released_at,
        }
    )
    record_workers(bench, key, fold_workers)
    if stats["first_record_at"] < released_at:
        results.note(f"{name}: records folded before their transaction was committed")
    if stats["dead_letters"] or stats["duplicates"] or stats["gaps"] or stats["replayed"]:
        results.note(f"the {workload.name} fold with {workers} workers was not clean: {stats}")
    return rate, topics


def record_workers(bench: Bench, key: str, workers: list[WorkerStats]) -> None:
    """Each worker's peak RSS as a figure, what it held and cached as details."""
    for worker in workers:
        prefix = f"{key}.worker_{worker.index}"
        bench.results.figures[f"{prefix}.peak_rss_mib"] = worker.peak_rss_bytes / MIB
        bench.results.details.update(
            {
                f"{prefix}.partitions": len(worker.partitions),
                f"{prefix}.rss_mib": worker.rss_bytes / MIB,
                f"{prefix}.cache_entries": worker.cache_entries,
                f"{prefix}.cache_mib": worker.cache_bytes / MIB,
                f"{prefix}.cache_limit_mib": worker.cache_limit_bytes / MIB,
            }
        )
        if worker.cache_bytes > worker.cache_limit_bytes:
            bench.results.note(f"{prefix}: cache over its limit: {worker}")


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
    """Start a service on ``state_dir`` as it is; time its restore and its readiness.

    The assignment instant is the last partition's assignment to its worker, when the
    group had settled: from then on, what delays readiness is the restore itself.
    """
    service = bench.query_service(topics, application_id, state_dir, f"query-restore-{kind}")
    with stopping(service):
        ready_at = service.wait_ready(bench.wait_seconds(bench.options.restore_orders))
        stats = service.stats()
        service.worker_stats(stats)
    prefix = f"restore.{kind}"
    partitions = partitions_of(stats)
    if sorted(partitions) != list(range(topics.partitions)):
        raise BenchError(f"{service.name} ready, but holds partitions {sorted(partitions)}")
    restores = {n: p.restore_seconds for n, p in partitions.items()}
    unfinished = sorted(n for n, seconds in restores.items() if seconds is None)
    if unfinished:
        bench.results.note(f"{prefix}: ready, but no restore time for partitions {unfinished}")
    assigned_at = max(p.assigned_at for p in partitions.values())
    ready = {
        f"{prefix}.ready_s": ready_at - service.started_at,
        f"{prefix}.ready_after_assignment_s": ready_at - assigned_at,
    }
    details = {
        f"{prefix}.join_s": assigned_at - service.started_at,
        f"{prefix}.consumed": stats["consumed"],
        **{f"{prefix}.partition_{n}.restore_s": s for n, s in restores.items() if s is not None},
        **{f"{prefix}.partition_{n}.restored": p.restored_records for n, p in partitions.items()},
    }
    restore: dict[str, float] = {f"{prefix}.restored_records": stats["restored_records"]}
    finished = [seconds for seconds in restores.values() if seconds is not None]
    if finished:
        restore[f"{prefix}.restore_s"] = max(finished)  # the slowest partition's
    results = bench.results
    results.figures.update(ready)
    # A warm restart may rightly restore nothing: its restore counts explain, not measure.
    (results.figures if kind == "cold" else results.details).update(restore)
    results.details.update(details)
    log.info("restart measured kind=%s %s", kind, {**ready, **restore, **details})


def new_service(
    bench: Bench, topics: TopicSet, name: str, workers: int, **extra_env: str
) -> QueryProcess:
    """A query service of its own group and state directory, named ``name`` in logs."""
    return bench.query_service(
        topics,
        f"bench-{bench.run_id}-{name}",
        bench.work_dir / f"{name}-state",
        name,
        workers,
        **extra_env,
    )
