"""``es-orders``: the composition root. Flags win over ES_ORDERS_* environment variables."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from es_orders.config import Settings
from es_orders.errors import EsOrdersError

app = typer.Typer(
    help="Event-sourced orders on Apache Kafka: command service, query service, dev broker.",
    no_args_is_help=True,
    add_completion=False,
)

BootstrapOption = Annotated[
    str | None,
    typer.Option("--bootstrap-servers", help="Kafka bootstrap servers, HOST:PORT[,...]."),
]


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the flags that were given on top."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise typer.BadParameter(problems) from None


def _exit(code: int) -> None:
    if code:
        raise typer.Exit(code)


@app.callback()
def main_options(
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="ES_ORDERS_LOG_LEVEL", help="DEBUG, INFO, ...")
    ] = "INFO",
) -> None:
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s %(message)s",
    )


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 9092,
) -> None:
    """Run the in-memory dev broker (Tansu) until Ctrl-C."""
    from es_orders.devbroker import run_broker_forever

    _exit(run_broker_forever(port))


@app.command()
def query(
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8887).")] = None,
    bootstrap_servers: BootstrapOption = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Local state stores (default .es-orders/state).")
    ] = None,
) -> None:
    """Run the query service: fold es-orders into local stores, serve GET /orders."""
    from es_orders.query.service import run_query_service

    settings = _settings(query_port=port, bootstrap_servers=bootstrap_servers, state_dir=state_dir)
    try:
        _exit(run_query_service(settings))
    except EsOrdersError as exc:
        typer.echo(f"es-orders query: {exc}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    app()
