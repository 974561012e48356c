"""``python -m benchmarks`` (what ``make bench`` runs): the benchmark, from the repository.

It is not part of the installed package: it needs quixstreams and rich (the dev extra,
``pip install -e '.[dev]'``) and runs from a checkout, next to ``src/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.context import PHASES
from benchmarks.run import bench_options, run_bench
from es_orders.cli import EngineName

app = typer.Typer(add_completion=False)


@app.command()
def bench(
    events: Annotated[
        int | None, typer.Option(help="Events of the narrow fold workload (300,000).")
    ] = None,
    orders: Annotated[int | None, typer.Option(help="Orders they belong to (10,000).")] = None,
    wide_events: Annotated[
        int | None, typer.Option(help="Events of the wide fold workload (1,000,000).")
    ] = None,
    wide_orders: Annotated[
        int | None, typer.Option(help="Orders they belong to (200,000).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Fold workers measured beside one (2, at most --partitions); the other "
            "phases' query services run with as many."
        ),
    ] = None,
    cache_mb: Annotated[
        int | None, typer.Option(help="Cache of each fold worker, MiB, in every service (64).")
    ] = None,
    memory_orders: Annotated[
        list[int] | None,
        typer.Option(
            help="Orders folded by one worker in the memory phase, one run per use of the "
            "flag (200,000 and 2,000,000)."
        ),
    ] = None,
    restore_orders: Annotated[
        int | None, typer.Option(help="Orders in the changelog to restore (200,000).")
    ] = None,
    partitions: Annotated[
        int | None, typer.Option(help="Partitions of every topic the bench creates (4).")
    ] = None,
    seconds: Annotated[
        float | None, typer.Option(help="Length of each latency measure (5 s).")
    ] = None,
    commands_orders: Annotated[
        int | None,
        typer.Option(help="Orders the commands phase creates, then changes (1,000)."),
    ] = None,
    commands_seconds: Annotated[
        float | None,
        typer.Option(help="Length of the commands phase's fixed-rate window (15 s)."),
    ] = None,
    commands_warm_up: Annotated[
        float | None,
        typer.Option(
            help="Commands at that rate before it, unmeasured (60 s): a fresh broker's JIT "
            "warms up."
        ),
    ] = None,
    commands_step: Annotated[
        list[float] | None,
        typer.Option(
            help="Offered rates (commands/s) the commands phase steps up through, one per "
            "use of the flag, rising (100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 2500, "
            "3000, 4000)."
        ),
    ] = None,
    commands_step_seconds: Annotated[
        float | None, typer.Option(help="Length of each commands step (8 s).")
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Run only this phase, one per use of the flag: {', '.join(PHASES)}. "
            "The table then shows only their figures."
        ),
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A tiny run, as a smoke test.")] = False,
    engine: Annotated[
        EngineName, typer.Option(help="The broker to measure on (auto: Kafka, else Tansu).")
    ] = EngineName.KAFKA,
    output: Annotated[Path, typer.Option(help="Where to write the figures.")] = Path(
        "bench-results.json"
    ),
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, ...")] = "INFO",
) -> None:
    """Benchmark fold, restore, latencies and commands on a fresh broker, next to quixstreams."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s %(message)s"
    )
    try:
        options = bench_options(
            quick,
            events=events,
            orders=orders,
            wide_events=wide_events,
            wide_orders=wide_orders,
            workers=workers,
            cache_mb=cache_mb,
            memory_orders=memory_orders,
            restore_orders=restore_orders,
            partitions=partitions,
            seconds=seconds,
            engine=engine.value,
            only=only,
            commands_orders=commands_orders,
            commands_seconds=commands_seconds,
            commands_warm_up_seconds=commands_warm_up,
            commands_step_rates=commands_step,
            commands_step_seconds=commands_step_seconds,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    code = run_bench(options, output)
    if code:
        raise typer.Exit(code)


if __name__ == "__main__":
    app()
