"""``es-orders up``: a broker, the command service and the query service, as one.

The services run as child processes (``python -m es_orders command`` / ``query``), each
in a session of its own, so a terminal's Ctrl-C reaches only this supervisor, which then
stops everything in order: the services first (they still flush records and leave their
consumer groups), the broker last. Any part that exits on its own takes the rest down
with it and makes ``up`` exit non-zero: half a system that looks alive is worse than none.
If ``up`` itself is killed, its children get SIGTERM from the kernel (``processes``), and
the next ``up`` removes the directories the killed one left. Each line a service writes
is shown with the service's name in front.

A broker it starts without ``--data-dir`` (Kafka in a temporary directory, or Tansu in
memory) starts each run from empty topics. Local state stores from an earlier run would
describe another history of those topics, so the services then get a fresh state
directory, removed at exit. With ``--data-dir`` the topics survive, and so do the stores.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

from es_orders.brokers import Broker, Engine, choose_engine, port_is_free, start_broker
from es_orders.config import Settings
from es_orders.errors import BrokerError, EsOrdersError
from es_orders.processes import RunDirectory, StopRequest, spawn, stop_all, stop_requested

log = logging.getLogger(__name__)

_POLL_INTERVAL = 0.25
_STOP_TIMEOUT = 20.0  # a service may wait this long for in-flight acknowledgements
_WAITING_REPORT_INTERVAL = 15.0


class SupervisorError(EsOrdersError):
    """Something keeps ``up`` from starting or running; the message says what, for a person."""


@dataclass(frozen=True, slots=True)
class UpOptions:
    settings: Settings
    simulator_rate: float
    kafka_port: int | None  # start a broker on it; None: use settings.bootstrap_servers
    state_parent: Path | None = None  # with a temporary broker: where the per-run dir goes
    engine: Engine = "auto"
    data_dir: Path | None = None  # the started broker's data, kept across runs
    query_instances: int = 1  # on consecutive ports from settings.query_port
    command_instances: int = 1  # on consecutive ports down from settings.command_port

    def query_ports(self) -> list[int]:
        return [self.settings.query_port + i for i in range(self.query_instances)]

    def command_ports(self) -> list[int]:
        # Downwards: the query instances take the ports above the default command port.
        return [self.settings.command_port - i for i in range(self.command_instances)]


class _Service:
    def __init__(self, name: str, label: str, process: subprocess.Popen[bytes], url: str) -> None:
        self.name = name
        self.label = label
        self.process = process
        self.url = url
        self.echo = threading.Thread(target=self._echo, name=f"{name} output", daemon=True)
        self.echo.start()

    def _echo(self) -> None:
        """Copy the service's output to ours, each line under the service's name."""
        output = self.process.stdout
        assert output is not None
        for line in output:
            sys.stdout.write(f"{self.label:<7} | {line.decode(errors='replace')}")
            sys.stdout.flush()


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in {"", "0.0.0.0", "::"} else host


def _query_name(index: int, count: int) -> str:
    return "query service" if count == 1 else f"query service {index + 1}"


def _command_name(index: int, count: int) -> str:
    return "command service" if count == 1 else f"command service {index + 1}"


def _check_ports(options: UpOptions) -> None:
    settings = options.settings
    query_ports, command_ports = options.query_ports(), options.command_ports()
    wanted: dict[str, int] = {}
    for i, port in enumerate(command_ports):
        wanted[_command_name(i, len(command_ports))] = port
    for i, port in enumerate(query_ports):
        wanted[_query_name(i, len(query_ports))] = port
    if shared := sorted(set(command_ports) & set(query_ports)):
        raise SupervisorError(
            f"port {shared[0]} would be a command service's and a query service's "
            f"(command ports: {command_ports[-1]}-{command_ports[0]}, "
            f"query ports: {query_ports[0]}-{query_ports[-1]})"
        )
    if query_ports[-1] > 65535:
        raise SupervisorError(f"query ports from {query_ports[0]} run past 65535")
    if command_ports[-1] < 1:
        raise SupervisorError(f"command ports down from {command_ports[0]} run below 1")
    for what, port in wanted.items():
        if not port_is_free(port, settings.host):
            raise SupervisorError(f"port {port} for the {what} is taken on {settings.host}")


class _Services:
    """The child processes, stopped together."""

    def __init__(self) -> None:
        self.running: list[_Service] = []
        self.clean = True  # every service that was stopped exited with code 0

    def start(self, name: str, label: str, subcommand: str, env: dict[str, str], url: str) -> None:
        # Its own session: our Ctrl-C is ours to pass on, in order.
        argv = [sys.executable, "-m", "es_orders", subcommand]
        process = spawn(argv, log_path=None, env=env, name=name)
        log.info("started %s pid=%s", name, process.pid)
        self.running.append(_Service(name, label, process, url))

    def first_exited(self) -> _Service | None:
        return next((s for s in self.running if s.process.poll() is not None), None)

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM every service, SIGKILL what is left after ``timeout``; sets ``clean``."""
        stop_all([(service.process, service.name) for service in self.running], timeout)
        for service in self.running:
            service.echo.join(1.0)
            if service.process.returncode != 0:
                self.clean = False
                log.warning("%s exited returncode=%s", service.name, service.process.returncode)


def _is_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _banner(broker: Broker | None, options: UpOptions, services: _Services, bootstrap: str) -> str:
    lines = ["", "es-orders is up:"]
    for service in services.running:
        lines.append(f"  {service.name:<16} {service.url}   (API docs: {service.url}/docs)")
    kind = broker.kind() if broker is not None else "external"
    lines.append(f"  {'kafka':<16} {bootstrap}   ({kind})")
    rate = options.simulator_rate
    lines.append(f"  {'simulator':<16} {f'{rate:g} command(s)/s' if rate > 0 else 'off'}")
    lines.append("Ctrl-C to stop.")
    return "\n".join(lines)


def _watch(
    options: UpOptions,
    services: _Services,
    broker: Broker | None,
    bootstrap: str,
    stop: StopRequest,
) -> None:
    """Wait for readiness, print the banner, then watch every part until ``stop``."""
    waiting_since = last_report = time.monotonic()
    ready = False
    while not stop.wait(_POLL_INTERVAL):
        dead = services.first_exited()
        if dead is not None:
            raise SupervisorError(
                f"the {dead.name} exited on its own with code {dead.process.returncode}"
            )
        if broker is not None and not broker.running:
            raise SupervisorError(f"the broker stopped on its own: {broker.exit_report()}")
        if ready:
            continue
        ready = all(_is_ready(s.url) for s in services.running)
        if ready:
            print(_banner(broker, options, services, bootstrap), flush=True)
        elif time.monotonic() - last_report > _WAITING_REPORT_INTERVAL:
            last_report = time.monotonic()
            log.info("still waiting for readiness seconds=%.0f", last_report - waiting_since)


def _child_env(
    options: UpOptions, broker: Broker | None, bootstrap: str, state_dir: Path
) -> dict[str, str]:
    settings = options.settings
    return {
        **(broker.client_env() if broker is not None else {}),
        **os.environ,
        "ES_ORDERS_BOOTSTRAP_SERVERS": bootstrap,
        "ES_ORDERS_STATE_DIR": str(state_dir),
        "ES_ORDERS_HOST": settings.host,
        "ES_ORDERS_COMMAND_PORT": str(settings.command_port),
        "ES_ORDERS_QUERY_PORT": str(settings.query_port),
        "ES_ORDERS_SIMULATOR_RATE": str(options.simulator_rate),
        "ES_ORDERS_LOG_LEVEL": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
    }


def _start_everything(
    options: UpOptions, services: _Services, stack: ExitStack, stop: StopRequest
) -> tuple[Broker | None, str]:
    """Start the broker (if ours) and the services; ``stack`` undoes it all in reverse."""
    settings = options.settings
    broker: Broker | None = None
    bootstrap, state_dir = settings.bootstrap_servers, settings.state_dir
    if options.kafka_port is not None:
        try:
            choice = choose_engine(options.engine, data_dir=options.data_dir)
            print(f"es-orders up: engine {choice.engine}: {choice.reason}", flush=True)
            broker = start_broker(choice, options.kafka_port, data_dir=options.data_dir)
        except BrokerError as exc:
            raise SupervisorError(str(exc)) from exc
        stack.callback(broker.stop)
        bootstrap = broker.bootstrap_servers
    if broker is not None and options.data_dir is None:
        run_dir = RunDirectory("es-orders-run-", options.state_parent)
        stack.callback(run_dir.remove)
        state_dir = run_dir.path
    stack.callback(services.stop)
    if stop.is_set():
        return broker, bootstrap
    env = _child_env(options, broker, bootstrap, state_dir)
    host = _client_host(settings.host)
    commands = options.command_ports()
    for i, port in enumerate(commands):
        command_env = {**env, "ES_ORDERS_COMMAND_PORT": str(port)}
        if len(commands) > 1:
            # Instances of one group, each with its own view: the partitions are split
            # between them, and each forwards a command to the holder of its order. The
            # simulator runs in the first, and sends the others' orders to them.
            command_env["ES_ORDERS_STATE_DIR"] = str(state_dir / f"command-{i + 1}")
            if i > 0:
                command_env["ES_ORDERS_SIMULATOR_RATE"] = "0"
        label = "command" if len(commands) == 1 else f"cmd-{i + 1}"
        services.start(
            _command_name(i, len(commands)), label, "command", command_env, f"http://{host}:{port}"
        )
    ports = options.query_ports()
    for i, port in enumerate(ports):
        name = _query_name(i, len(ports))
        query_env = {**env, "ES_ORDERS_QUERY_PORT": str(port)}
        if len(ports) > 1:
            # Instances of one application, each with stores of its own: the partitions
            # are split between them, and each answers for all (GET /cluster shows who
            # holds what).
            query_env["ES_ORDERS_STATE_DIR"] = str(state_dir / f"query-{i + 1}")
        label = "query" if len(ports) == 1 else f"query-{i + 1}"
        services.start(name, label, "query", query_env, f"http://{host}:{port}")
    log.info("state_dir=%s bootstrap_servers=%s", state_dir, bootstrap)
    return broker, bootstrap


def run_up(options: UpOptions) -> int:
    """Run everything until SIGINT/SIGTERM (0) or until a part fails (1). Main thread only."""
    services = _Services()
    # Readiness polls would otherwise log a line each at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with stop_requested() as stop:
        try:
            _check_ports(options)
            with ExitStack() as stack:  # on the way out: the services, state dir, broker
                try:
                    broker, bootstrap = _start_everything(options, services, stack, stop)
                    _watch(options, services, broker, bootstrap, stop)
                except SupervisorError as exc:
                    rest = "; stopping the rest" if services.running else ""
                    print(f"es-orders up: {exc}{rest}", file=sys.stderr, flush=True)
                    return 1
                print("Stopping es-orders...", flush=True)
        except SupervisorError as exc:
            print(f"es-orders up: {exc}", file=sys.stderr, flush=True)
            return 1
    if not services.clean:
        print("es-orders up: a service did not stop cleanly (see above)", file=sys.stderr)
        return 1
    print("Stopped.", flush=True)
    return 0
