"""The command service: its own view of the orders, the write path, HTTP and the simulator."""

from __future__ import annotations

import logging
import math
import os
import time

from es_orders.command.adapters import KafkaEventLog, ViewStates
from es_orders.command.api import create_command_app
from es_orders.command.confirm import FoldWatch, IdempotencyIndex
from es_orders.command.handler import CommandHandler, OverlayPruner
from es_orders.command.remote import RemoteCommands
from es_orders.command.simulator import Simulator
from es_orders.config import Settings
from es_orders.domain import OrderState
from es_orders.kafka.admin import (
    ensure_topics,
    idempotency_topic_spec,
    members_topic_spec,
    topic_specs,
)
from es_orders.kafka.partitioner import partition_for
from es_orders.kafka.producer import AckedProducer
from es_orders.query.members import Directory, Membership, new_instance_id
from es_orders.query.reads import describe_self
from es_orders.query.routing import Cluster
from es_orders.runtime.clients import MaterializerConfig
from es_orders.runtime.materializer import Materializer
from es_orders.runtime.metrics import FoldCollector
from es_orders.runtime.partition import Phase
from es_orders.runtime.status import StatusBoard
from es_orders.runtime.view import MaterializedView
from es_orders.runtime.views import Readiness
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
        # Records are folded (and commands confirmed) as they come; the view's store and
        # changelog are written once a second (what the fold computed in between is in
        # the handler's overlay).
        checkpoint_interval=1.0,
    )


def run_command_service(settings: Settings, *, simulator_rate: float) -> int:
    """Serve the command API on ``settings.command_port`` until SIGINT/SIGTERM; the exit code.

    ``simulator_rate`` commands a second come from the built-in simulator (0: none).
    Instances in one group (``command_application_id``) share the partitions: each decides
    the commands of the orders it holds and forwards the others to their holder.
    """
    kafka = settings.kafka_config()
    ensure_topics(
        kafka,
        [
            *topic_specs(settings),
            members_topic_spec(settings, settings.command_members_topic),
            idempotency_topic_spec(settings),
        ],
    )
    config = command_materializer_config(settings)
    # The command side's view folds on a thread of this process: deciding a command needs
    # the fold's latest state, and its word on each event appended, not a read across
    # processes.
    board = StatusBoard(config.state_dir, config.group_id, config.source_topic, 1)
    board.started(0, os.getpid())
    instance, url = new_instance_id(), settings.command_url()
    index = IdempotencyIndex(kafka, settings.idempotency_topic, instance)
    handlers: list[CommandHandler] = []

    def fresh(state: OrderState, partition: int, offset: int) -> None:
        handlers[0].fresh(state, partition, offset)

    watch = FoldWatch(index, fresh)
    materializer = Materializer(config, publish=board.update, observer=watch)
    producer = AckedProducer(kafka)
    view = MaterializedView(board, settings.partitions)
    directory = Directory()
    members = Membership(
        kafka,
        settings.command_members_topic,
        instance,
        url,
        lambda: describe_self(view),
        directory,
    )
    cluster = Cluster(instance, url, settings.partitions, directory)

    def readiness() -> Readiness:
        ready = cluster.readiness(view.readiness())
        if ready.ready and not index.caught_up:
            return Readiness(False, ("idempotency keys: reading the idempotency topic",))
        return ready

    def held_since(partition: int) -> float | None:
        part = board.snapshot.held.get(partition)
        if part is None or part.phase != Phase.CAUGHT_UP:
            return None
        return time.monotonic() - (time.time() - part.assigned_at)

    def committed(partition: int) -> int | None:
        part = board.snapshot.held.get(partition)
        return None if part is None else part.consumed

    def caught_up_at(order_id: str) -> float:
        held = board.snapshot.held.get(partition_for(order_id.encode(), settings.partitions))
        at = held.read_to_end_at if held is not None else None
        return at if at is not None else -math.inf

    handler = CommandHandler(
        ViewStates(view),
        KafkaEventLog(producer, settings.events_topic),
        readiness,
        confirmer=watch,
        keys=index,
        partitions=settings.partitions,
        held_since=held_since,
        ack_timeout=producer.message_timeout + _ACK_MARGIN,
        command_timeout=settings.command_timeout_s,
        caught_up_at=caught_up_at,
        committed=committed,
    )
    handlers.append(handler)

    last_held: list[set[int]] = [set()]

    def assignment_changed() -> None:
        # The board publishes progress several times a second: act on changes only.
        held = set(board.snapshot.held)
        if held != last_held[0]:
            last_held[0] = held
            watch.revoked(held)
            handler.released(held)

    board.listeners.extend([members.changed, assignment_changed])
    app = create_command_app(
        handler,
        cluster=cluster,
        api_token=settings.api_token or None,
        max_body_bytes=settings.max_body_bytes,
        collectors=[FoldCollector(lambda: board.snapshot)],
    )
    workers: dict[str, Worker] = {
        "idempotency-index": index,
        "materializer": materializer,
        "producer": producer,
        "overlay-pruner": OverlayPruner(handler),
        "members": members,
    }
    if simulator_rate > 0:
        remote = RemoteCommands(cluster, settings.api_token or None)
        workers["simulator"] = Simulator(handler, simulator_rate, remote=remote)

    def started() -> None:
        log.info(
            "command service listening on %s:%d advertised_url=%s docs=%s/docs group=%s "
            "simulator_rate=%s auth=%s",
            settings.host,
            settings.command_port,
            url,
            url,
            settings.command_application_id,
            simulator_rate,
            "bearer" if settings.api_token else "none",
        )

    return serve(app, settings.host, settings.command_port, workers, on_started=started)
