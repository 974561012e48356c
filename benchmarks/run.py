"""One benchmark run: a fresh broker (Apache Kafka by default), the phases, the report.

Phases run one after another, never side by side: on a 2-core machine anything running
next to a measure is in it. Each phase stops what it started before the next begins,
and the broker is stopped last, also on errors and Ctrl-C.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import httpx
from rich.console import Console

from benchmarks.commands import measure_commands
from benchmarks.context import PHASES, Bench, BenchOptions, Results, fold_key
from benchmarks.groups import measure_groups
from benchmarks.interactive import (
    measure_command_to_visible,
    measure_forwarded_latency,
    measure_query_latency,
)
from benchmarks.memory import measure_memory
from benchmarks.ours import measure_fold, measure_restore
from benchmarks.quix import measure_quix_fold, measure_quix_restore
from benchmarks.report import last_line, print_table, write_json
from es_orders.brokers import Engine, choose_engine, start_broker
from es_orders.errors import EsOrdersError
from es_orders.processes import sigterm_interrupts

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def bench_options(
    quick: bool,
    *,
    events: int | None = None,
    orders: int | None = None,
    wide_events: int | None = None,
    wide_orders: int | None = None,
    workers: int | None = None,
    cache_mb: int | None = None,
    memory_orders: Sequence[int] | None = None,
    restore_orders: int | None = None,
    partitions: int | None = None,
    seconds: float | None = None,
    engine: Engine = "kafka",
    only: Sequence[str] | None = None,
    commands_orders: int | None = None,
    commands_seconds: float | None = None,
    commands_warm_up_seconds: float | None = None,
    commands_step_rates: Sequence[float] | None = None,
    commands_step_seconds: float | None = None,
) -> BenchOptions:
    """The defaults (or the quick ones) with the flags that were given on top.

    Raises ``ValueError`` for a combination that cannot run.
    """
    base = BenchOptions.quick() if quick else BenchOptions()
    options = replace(
        base,
        events=_given(events, base.events),
        orders=_given(orders, base.orders),
        wide_events=_given(wide_events, base.wide_events),
        wide_orders=_given(wide_orders, base.wide_orders),
        workers=_given(workers, base.workers),
        cache_mb=_given(cache_mb, base.cache_mb),
        memory_orders=tuple(memory_orders) if memory_orders else base.memory_orders,
        restore_orders=_given(restore_orders, base.restore_orders),
        partitions=_given(partitions, base.partitions),
        latency_seconds=_given(seconds, base.latency_seconds),
        command_seconds=_given(seconds, base.command_seconds),
        engine=engine,
        # In the order they run, whatever the order they were named in.
        phases=tuple(p for p in PHASES if p in only) + tuple(set(only) - set(PHASES))
        if only
        else base.phases,
        commands_orders=_given(commands_orders, base.commands_orders),
        commands_seconds=_given(commands_seconds, base.commands_seconds),
        commands_warm_up_seconds=_given(commands_warm_up_seconds, base.commands_warm_up_seconds),
        commands_step_rates=tuple(commands_step_rates)
        if commands_step_rates
        else base.commands_step_rates,
        commands_step_seconds=_given(commands_step_seconds, base.commands_step_seconds),
    )
    options.validate()
    return options


def _given(value: _T | None, default: _T) -> _T:
    return default if value is None else value


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
            bench.broker_pids = broker.pids
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
    print_table(results, options, console)
    console.print(f"results: {output} ({time.monotonic() - started:.0f} s)")
    if error is not None:
        print(f"benchmark: {error}", file=sys.stderr)
        return 1
    print(last_line(results, options), flush=True)
    return 0


def _phases(bench: Bench) -> None:
    options, figures = bench.options, bench.results.figures
    if options.runs("fold"):
        for workload in options.workloads():
            log.info("bench phase=fold-%s", workload.name)
            one, topics = measure_fold(bench, workload, 1)
            without, _ = measure_fold(bench, workload, 1, history=False)
            figures[f"fold.{workload.name}.history_vs_off"] = one / without
            measure_fold(bench, workload, options.workers)
            log.info("bench phase=quixstreams-fold-%s", workload.name)
            quix = measure_quix_fold(bench, topics, workload)
            figures[f"fold.{workload.name}.vs_quixstreams"] = one / quix
    if options.runs("memory"):
        log.info("bench phase=memory")
        measure_memory(bench)
    if options.runs("restore"):
        log.info("bench phase=restore")
        restore_topics = measure_restore(bench)
        log.info("bench phase=quixstreams-restore")
        measure_quix_restore(bench, restore_topics)
    if options.runs("query-latency"):
        log.info("bench phase=query-latency")
        narrow = options.workloads()[0]
        # Without the fold phase its rate is unknown: the preload is then the most
        # the phase allows (``latency_max_events``), enough for any honest fold rate.
        fold_rate = figures.get(f"{fold_key(narrow, options.workers)}.events_per_s", math.inf)
        measure_query_latency(bench, fold_rate)
    if options.runs("forwarded-latency"):
        log.info("bench phase=forwarded-latency")
        measure_forwarded_latency(bench)
    if options.runs("command-to-visible"):
        log.info("bench phase=command-to-visible")
        measure_command_to_visible(bench)
    if options.runs("groups"):
        log.info("bench phase=groups")
        measure_groups(bench)
    if options.runs("commands"):
        log.info("bench phase=commands")
        measure_commands(bench)
