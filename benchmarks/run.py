"""One benchmark run: a fresh broker (Apache Kafka by default), the phases, the report.

Phases run one after another, never side by side: on a 2-core machine anything running
next to a measure is in it. Each phase stops what it started before the next begins,
and the broker is stopped last, also on errors and Ctrl-C.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
from rich.console import Console

from benchmarks.context import Bench, BenchOptions, Results
from benchmarks.groups import measure_groups
from benchmarks.interactive import measure_command_to_visible, measure_query_latency
from benchmarks.ours import measure_fold, measure_restore
from benchmarks.quix import measure_quix_fold, measure_quix_restore
from benchmarks.report import last_line, print_table, write_json
from es_orders.brokers import Engine, choose_engine, start_broker
from es_orders.errors import EsOrdersError
from es_orders.processes import sigterm_interrupts

log = logging.getLogger(__name__)


def bench_options(
    quick: bool,
    *,
    events: int | None = None,
    orders: int | None = None,
    restore_orders: int | None = None,
    seconds: float | None = None,
    engine: Engine = "kafka",
) -> BenchOptions:
    """The defaults (or the quick ones) with the flags that were given on top.

    Raises ``ValueError`` for a combination that cannot run.
    """
    base = BenchOptions.quick() if quick else BenchOptions()
    options = replace(
        base,
        events=base.events if events is None else events,
        orders=base.orders if orders is None else orders,
        restore_orders=base.restore_orders if restore_orders is None else restore_orders,
        latency_seconds=base.latency_seconds if seconds is None else seconds,
        command_seconds=base.command_seconds if seconds is None else seconds,
        engine=engine,
    )
    options.validate()
    return options


def run_bench(options: BenchOptions, output: Path) -> int:
    """Run every phase, print the table and the summary line; the exit code (0 or 1).

    Must run on the main thread: SIGTERM becomes a KeyboardInterrupt, like Ctrl-C, so
    that the ``finally`` blocks stop every child process before the bench exits.
    """
    with sigterm_interrupts():
        return _run(options, output)


def _run(options: BenchOptions, output: Path) -> int:
    # httpx logs every request at INFO: thousands of lines a second from the load
    # generator, and the time spent writing them would show up as latency.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    work_dir = Path(tempfile.mkdtemp(prefix="es-orders-bench-"))
    started = time.monotonic()
    results = Results()
    error: str | None = None
    failed = True
    try:
        choice = choose_engine(options.engine)
        log.info("bench engine=%s reason=%s", choice.engine, choice.reason)
        broker = start_broker(choice, log_path=work_dir / "broker.log")
        results.broker = broker.kind()
        try:
            run_id = uuid.uuid4().hex[:8]
            bench = Bench(broker.bootstrap_servers, work_dir, options, run_id, results)
            bench.client_env = broker.client_env()
            _phases(bench)
        finally:
            broker.stop()
        failed = False
    except EsOrdersError as exc:
        error = str(exc)
    except httpx.HTTPError as exc:  # a control request to a service (stats, readiness)
        error = f"{exc.request.method} {exc.request.url}: {type(exc).__name__}: {exc}"
    finally:
        # A failed run keeps its logs: they are the only account of what went wrong.
        if failed:
            log.warning("bench did not complete; its logs are kept in %s", work_dir)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    write_json(output, options, results, error)
    console = Console(width=None if sys.stdout.isatty() else 120)
    print_table(results, console)
    console.print(f"results: {output} ({time.monotonic() - started:.0f} s)")
    if error is not None:
        print(f"benchmark: {error}", file=sys.stderr)
        return 1
    print(last_line(results), flush=True)
    return 0


def _phases(bench: Bench) -> None:
    log.info("bench phase=fold")
    fold_topics = measure_fold(bench)
    log.info("bench phase=quixstreams-fold")
    measure_quix_fold(bench, fold_topics, int(bench.results.details["fold.events"]))
    figures = bench.results.figures
    figures["fold.vs_quixstreams"] = (
        figures["fold.events_per_s"] / figures["quix.fold.events_per_s"]
    )
    log.info("bench phase=restore")
    restore_topics = measure_restore(bench)
    log.info("bench phase=quixstreams-restore")
    measure_quix_restore(bench, restore_topics)
    log.info("bench phase=query-latency")
    measure_query_latency(bench, figures["fold.events_per_s"])
    log.info("bench phase=command-to-visible")
    measure_command_to_visible(bench)
    log.info("bench phase=groups")
    measure_groups(bench)
