"""The quixstreams baseline on the same broker and data: its fold and its restore.

The app (``quix_app``) runs as a child process with a consumer group and state directory
of its own; topics, its changelog included, are created here with explicit configs.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.children import ChildProcess, service_env, stopping
from benchmarks.context import Bench, Workload
from benchmarks.errors import BenchError
from benchmarks.topics import TopicSet, create_quix_changelog, produce_to, sentinel_records

log = logging.getLogger(__name__)


class QuixProcess(ChildProcess):
    """``python -m benchmarks.quix_app`` and the status file it keeps."""

    def __init__(self, bench: Bench, topics: TopicSet, group: str, state_dir: Path, name: str):
        self.status_path = bench.work_dir / f"{name}.status.json"
        self.status_path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "benchmarks.quix_app"]
        argv += ["--bootstrap-servers", bench.bootstrap_servers, "--topic", topics.events]
        argv += ["--group", group, "--state-dir", str(state_dir), "--status", str(self.status_path)]
        super().__init__(name, argv, service_env({}), bench.work_dir / f"{name}.log")

    def status(self) -> dict[str, Any]:
        try:
            status: dict[str, Any] = json.loads(self.status_path.read_text())
        except FileNotFoundError:
            return {}
        return status

    def wait_status(
        self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        self.wait_for(what, lambda: check(self.status()), timeout, every=0.05)
        return self.status()


def measure_quix_fold(bench: Bench, topics: TopicSet, workload: Workload) -> float:
    """Fold ``workload``'s events; throughput from first to last message processed.

    quixstreams commits every 5 s (its default) while it processes; the last commit,
    after the last message, is outside this window, unlike es-orders' last checkpoint.
    Returns events/s.
    """
    events = workload.events
    name = f"quix-fold-{workload.name}"
    group = f"bench-{bench.run_id}-{name}"
    create_quix_changelog(bench.bootstrap_servers, topics, group)
    app = QuixProcess(bench, topics, group, bench.work_dir / f"{name}-state", name)
    with stopping(app):
        status = app.wait_status(
            "all events processed",
            lambda s: s.get("processed", 0) >= events,
            bench.wait_seconds(events),
        )
    seconds = status["last_at"] - status["first_at"]
    if seconds <= 0:
        raise BenchError(f"the fold of {events} events took no measurable time: use more")
    rate: float = status["processed"] / seconds
    log.info(
        "quixstreams fold measured workload=%s events=%d seconds=%.2f rate=%.0f",
        workload.name,
        events,
        seconds,
        rate,
    )
    key = f"quix.fold.{workload.name}"
    bench.results.figures[f"{key}.events_per_s"] = rate
    bench.results.details.update(
        {
            f"{key}.events": status["processed"],
            f"{key}.seconds": seconds,
            f"{key}.start_to_first_record_s": status["first_at"] - app.started_at,
            f"{key}.dead_letters": status["dead_letters"],
        }
    )
    return rate


def measure_quix_restore(bench: Bench, topics: TopicSet) -> None:
    """Fold the restore phase's orders, then delete the state directory and restart.

    Recovery is timed from quixstreams' own log ("Beginning recovery check" to "Recovery
    process complete"); ready is when a sentinel record, produced to every partition
    right after the restart, has been processed (data partitions stay paused until
    recovery ends), counted from process start like es-orders' time to ready.
    """
    orders = bench.options.restore_orders
    group = f"bench-{bench.run_id}-quix-restore"
    state_dir = bench.work_dir / "quix-restore-state"
    create_quix_changelog(bench.bootstrap_servers, topics, group)
    builder = QuixProcess(bench, topics, group, state_dir, "quix-restore-build")
    with stopping(builder):
        builder.wait_status(
            "the changelog built",
            lambda s: s.get("processed", 0) >= orders,
            bench.wait_seconds(orders),
        )
    shutil.rmtree(state_dir)
    app = QuixProcess(bench, topics, group, state_dir, "quix-restore")
    with stopping(app):
        records = sentinel_records(topics.partitions)
        produce_to(bench.bootstrap_servers, topics.events, records)
        status = app.wait_status(
            "sentinels processed",
            lambda s: s.get("sentinels", 0) >= topics.partitions,
            bench.wait_seconds(orders),
        )
    started, completed = status["recovery_started_at"], status["recovery_completed_at"]
    if not started or not completed:
        bench.results.note("quixstreams logged no recovery after its state dir was deleted")
    figures = {
        "quix.restore.recovery_s": completed - started,
        "quix.restore.ready_s": status["sentinel_at"] - app.started_at,
    }
    bench.results.figures.update(figures)
    bench.results.details["quix.restore.recovery_began_after_s"] = started - app.started_at
    log.info("quixstreams restore measured %s", figures)
