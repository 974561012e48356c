"""``es-orders broker``: run a broker in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import sys
from pathlib import Path

from es_orders.brokers import Engine, choose_engine, start_broker
from es_orders.errors import BrokerError
from es_orders.processes import stop_requested


def run_broker_forever(
    engine: Engine = "auto", port: int = 9092, *, nodes: int = 1, data_dir: Path | None = None
) -> int:
    """Run a broker until SIGINT or SIGTERM; stop every node and wait for the exits.

    Returns the process exit code: 0 after a clean stop, 1 if the broker cannot start
    or a node dies on its own. Must run on the main thread (it installs signal handlers).
    """
    # Installed before the start so that a Ctrl-C during it still ends in a clean stop.
    with stop_requested() as stopping:
        try:
            choice = choose_engine(engine, nodes=nodes, data_dir=data_dir)
            print(f"es-orders broker: engine {choice.engine}: {choice.reason}", flush=True)
            broker = start_broker(choice, port, nodes=nodes, data_dir=data_dir)
        except BrokerError as exc:
            print(f"es-orders broker: {exc}", file=sys.stderr)
            return 1
        with broker:
            print(
                f"{broker.describe()}\n  bootstrap servers: {broker.bootstrap_servers}\n"
                f"  log: {broker.log_path}\n  Ctrl-C to stop.",
                flush=True,
            )
            while not stopping.wait(0.5):
                if not broker.running:
                    print(f"es-orders broker: {broker.exit_report()}", file=sys.stderr)
                    return 1
            print("Stopping the broker (waiting for every node to exit)...", flush=True)
        return 0
