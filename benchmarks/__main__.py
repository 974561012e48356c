"""``python -m benchmarks`` (what ``make bench`` runs): the benchmark, from the repository.

It is not part of the installed package: it needs quixstreams and rich (the dev extra,
``pip install -e '.[dev]'``) and runs from a checkout, next to ``src/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.run import bench_options, run_bench
from es_orders.cli import EngineName

app = typer.Typer(add_completion=False)


@app.command()
def bench(
    events: Annotated[int | None, typer.Option(help="Events to fold (300,000).")] = None,
    orders: Annotated[int | None, typer.Option(help="Orders they belong to (10,000).")] = None,
    restore_orders: Annotated[
        int | None, typer.Option(help="Orders in the changelog to restore (100,000).")
    ] = None,
    seconds: Annotated[
        float | None, typer.Option(help="Length of each latency measure (5 s).")
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
    """Benchmark fold, restore and latencies on a fresh broker, next to quixstreams."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s %(message)s"
    )
    try:
        options = bench_options(
            quick,
            events=events,
            orders=orders,
            restore_orders=restore_orders,
            seconds=seconds,
            engine=engine.value,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    code = run_bench(options, output)
    if code:
        raise typer.Exit(code)


if __name__ == "__main__":
    app()
