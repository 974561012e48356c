"""The command service: its own view of the orders, the write path, HTTP and the simulator."""

from __future__ import annotations

import logging
import math
import os

from es_orders.command.adapters import KafkaEventLog, ViewStates, owns_every_partition
from es_orders.command.api import create_command_app
from es_orders.command.handler import CommandHandler, OverlayPruner
from es_orders.command.simulator import Simulator
from es_orders.config import Settings
from es_orders.kafka.admin import ensure_topics, topic_specs
from es_orders.kafka.partitioner import partition_for
from es_orders.kafka.producer import AckedProducer
from es_orders.runtime.clients import MaterializerConfig
from es_orders.runtime.materializer import Materializer
from es_orders.runtime.status import StatusBoard
from es_orders.runtime.view import MaterializedView
from es_orders.serving import Worker, serve

log = logging.getLogger(__name__)

# Beyond librdkafka's own message timeout, which always ends in a delivery report.
_ACK_MARGIN = 5.0


def command_materializer_config(settings: Settings) -> MaterializerConfig:
    """The command side's view: its own group and changelog, so it never shares state."""
    return MaterializerConfig(
        source_topic=settings.events_topic,
        changelog_topic=settings.command_state_topic,
        # The query service dead-letters what cannot be folded; a second copy from this
        # view would break "each poison record lands in the dead letter topic once".
        dlq_topic=None,
        group_id=settings.command_application_id,
        state_dir=settings.state_dir,
        kafka=settings.kafka_config(),
        partitions=settings.partitions,
    )


def run_command_service(settings: Settings, *, simulator_rate: float) -> int:
    """Serve the command API on ``settings.command_port`` until SIGINT/SIGTERM; the exit code.

    ``simulator_rate`` commands a second come from the built-in simulator (0: none).
    """
    ensure_topics(settings.kafka_config(), topic_specs(settings))
    config = command_materializer_config(settings)
    # The command side's view folds on a thread of this process: its commands are few,
    # and deciding one needs the view's latest state, not a read across processes.
    board = StatusBoard(config.state_dir, config.group_id, config.source_topic, 1)
    board.started(0, os.getpid())
    materializer = Materializer(config, publish=board.update)
    producer = AckedProducer(settings.kafka_config())
    view = MaterializedView(board, settings.partitions)
    readiness = owns_every_partition(
        view.readiness, lambda: set(board.snapshot.readable), settings.partitions
    )

    def caught_up_at(order_id: str) -> float:
        held = board.snapshot.held.get(partition_for(order_id.encode(), settings.partitions))
        at = held.read_to_end_at if held is not None else None
        return at if at is not None else -math.inf

    handler = CommandHandler(
        ViewStates(view),
        KafkaEventLog(producer, settings.events_topic),
        readiness,
        ack_timeout=producer.message_timeout + _ACK_MARGIN,
        command_timeout=settings.command_timeout_s,
        caught_up_at=caught_up_at,
    )
    app = create_command_app(
        handler, api_token=settings.api_token or None, max_body_bytes=settings.max_body_bytes
    )
    workers: dict[str, Worker] = {
        "materializer": materializer,
        "producer": producer,
        "overlay-pruner": OverlayPruner(handler),
    }
    if simulator_rate > 0:
        workers["simulator"] = Simulator(handler, simulator_rate)
    url = f"http://{settings.host}:{settings.command_port}"

    def started() -> None:
        log.info(
            "command service listening url=%s docs=%s/docs group=%s simulator_rate=%s auth=%s",
            url,
            url,
            settings.command_application_id,
            simulator_rate,
            "bearer" if settings.api_token else "none",
        )

    return serve(app, settings.host, settings.command_port, workers, on_started=started)
