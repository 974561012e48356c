"""``es-orders``: the composition root. Flags win over ES_ORDERS_* environment variables."""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from es_orders.config import Settings
from es_orders.errors import EsOrdersError

if TYPE_CHECKING:
    from es_orders.brokers import Engine

app = typer.Typer(
    help="Event-sourced orders on Apache Kafka: command service, query service, brokers.",
    no_args_is_help=True,
    add_completion=False,
)

BootstrapOption = Annotated[
    str | None,
    typer.Option("--bootstrap-servers", help="Kafka bootstrap servers, HOST:PORT[,...]."),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(help="Keep Kafka's data here across restarts (default: a temporary dir)."),
]
StateDirOption = Annotated[
    Path | None,
    typer.Option(help="Local state stores (default .es-orders/state; env ES_ORDERS_STATE_DIR)."),
]
RateOption = Annotated[
    float | None,
    typer.Option(
        "--rate", min=0.0, help="Simulated commands a second (default 1; 0 or --no-simulate: off)."
    ),
]


class EngineName(StrEnum):
    AUTO = "auto"
    KAFKA = "kafka"
    TANSU = "tansu"


EngineOption = Annotated[
    EngineName,
    typer.Option(help="auto: Apache Kafka where Java 17+ and its jars are at hand, else Tansu."),
]
SimulateOption = Annotated[
    bool, typer.Option("--simulate/--no-simulate", help="Run the built-in order simulator.")
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


def _engine(name: EngineName) -> Engine:
    return name.value


def _env_names_kafka() -> bool:
    return bool(os.environ.get("ES_ORDERS_BOOTSTRAP_SERVERS"))


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
    engine: EngineOption = EngineName.AUTO,
    port: Annotated[
        int, typer.Option(help="Port on 127.0.0.1 (with --nodes 3: the first of three).")
    ] = 9092,
    data_dir: DataDirOption = None,
    nodes: Annotated[
        int, typer.Option(min=1, max=3, help="1, or 3 for a KRaft cluster (Kafka only).")
    ] = 1,
) -> None:
    """Run a broker on 127.0.0.1 until Ctrl-C: Apache Kafka, or Tansu without a JVM."""
    from es_orders.brokers.foreground import run_broker_forever

    if nodes == 2:
        raise typer.BadParameter("a cluster here has 1 or 3 nodes", param_hint="--nodes")
    _exit(run_broker_forever(_engine(engine), port, nodes=nodes, data_dir=data_dir))


@app.command()
def query(
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8887).")] = None,
    bootstrap_servers: BootstrapOption = None,
    state_dir: StateDirOption = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Fold worker processes, each a member of the consumer group "
            "(default 1; env ES_ORDERS_WORKERS).",
        ),
    ] = None,
    cache_mb: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="Each fold worker's cache of order states, in MiB "
            "(default 64; env ES_ORDERS_CACHE_MB).",
        ),
    ] = None,
    advertised_url: Annotated[
        str | None,
        typer.Option(
            help="Where the other query instances reach this one "
            "(default http://HOST:PORT; env ES_ORDERS_ADVERTISED_URL).",
        ),
    ] = None,
) -> None:
    """Run the query service: fold es-orders into local stores, serve GET /orders."""
    from es_orders.query.service import run_query_service

    settings = _settings(
        query_port=port,
        bootstrap_servers=bootstrap_servers,
        state_dir=state_dir,
        workers=workers,
        cache_mb=cache_mb,
        advertised_url=advertised_url,
    )
    try:
        _exit(run_query_service(settings))
    except EsOrdersError as exc:
        typer.echo(f"es-orders query: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def command(
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8886).")] = None,
    bootstrap_servers: BootstrapOption = None,
    rate: RateOption = None,
    simulate: SimulateOption = True,
    state_dir: StateDirOption = None,
    advertised_url: Annotated[
        str | None,
        typer.Option(
            help="Where the other command instances reach this one "
            "(default http://HOST:PORT; env ES_ORDERS_ADVERTISED_URL).",
        ),
    ] = None,
) -> None:
    """Run the command service: validate commands, append order events, simulate traffic."""
    from es_orders.command.service import run_command_service

    settings = _settings(
        command_port=port,
        bootstrap_servers=bootstrap_servers,
        simulator_rate=rate,
        state_dir=state_dir,
        advertised_url=advertised_url,
    )
    try:
        _exit(
            run_command_service(
                settings, simulator_rate=settings.simulator_rate if simulate else 0.0
            )
        )
    except EsOrdersError as exc:
        typer.echo(f"es-orders command: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def up(
    engine: EngineOption = EngineName.AUTO,
    kafka_port: Annotated[
        int, typer.Option(help="Port of the broker it starts (unless --bootstrap-servers).")
    ] = 9092,
    data_dir: DataDirOption = None,
    command_port: Annotated[int | None, typer.Option(help="Command service port (8886).")] = None,
    query_port: Annotated[
        int | None,
        typer.Option(help="Query service port (8887); more instances take the next ports."),
    ] = None,
    query_instances: Annotated[
        int,
        typer.Option(
            min=1,
            max=16,
            help="Query service instances, on consecutive ports; any of them answers for "
            "every order.",
        ),
    ] = 1,
    command_instances: Annotated[
        int,
        typer.Option(
            min=1,
            max=16,
            help="Command service instances, on consecutive ports down from the command "
            "port (8886, 8885, ...); any of them takes a command on any order.",
        ),
    ] = 1,
    rate: RateOption = None,
    simulate: SimulateOption = True,
    bootstrap_servers: Annotated[
        str | None,
        typer.Option(
            "--bootstrap-servers",
            help="Use this running Kafka instead of starting a broker "
            "(ES_ORDERS_BOOTSTRAP_SERVERS does the same).",
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Local state stores (with a temporary broker: where its per-run dir goes)."
        ),
    ] = None,
) -> None:
    """Run everything: a broker, the command service with its simulator, the query service."""
    from es_orders.supervisor import UpOptions, run_up

    settings = _settings(
        command_port=command_port,
        query_port=query_port,
        bootstrap_servers=bootstrap_servers,
        simulator_rate=rate,
        state_dir=state_dir,
    )
    options = UpOptions(
        settings=settings,
        simulator_rate=settings.simulator_rate if simulate else 0.0,
        # A Kafka named by the flag or by ES_ORDERS_BOOTSTRAP_SERVERS is used as it is.
        kafka_port=None if bootstrap_servers or _env_names_kafka() else kafka_port,
        state_parent=state_dir,
        engine=_engine(engine),
        data_dir=data_dir,
        query_instances=query_instances,
        command_instances=command_instances,
    )
    _exit(run_up(options))


class TailTopic(StrEnum):
    EVENTS = "events"
    STATE = "state"
    DLQ = "dlq"


@app.command()
def tail(
    topic: Annotated[
        TailTopic,
        typer.Argument(
            help="events (ES_ORDERS_EVENTS_TOPIC), state (ES_ORDERS_STATE_TOPIC) or dlq "
            "(ES_ORDERS_DLQ_TOPIC).",
            show_default=False,
        ),
    ],
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the first record, not the end.")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep printing records as they arrive, until Ctrl-C."),
    ] = False,
    bootstrap_servers: BootstrapOption = None,
) -> None:
    """Print a topic's records, decoded, one JSON object a line; without --follow it
    stops at the end of the topic."""
    from es_orders.tail import run_tail

    settings = _settings(bootstrap_servers=bootstrap_servers)
    try:
        _exit(run_tail(settings, topic.value, from_beginning=from_beginning, follow=follow))
    except EsOrdersError as exc:
        typer.echo(f"es-orders tail: {exc}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    app()
