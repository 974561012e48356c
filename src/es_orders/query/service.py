"""The query service: the materializer on the events topic plus interactive queries."""

from __future__ import annotations

import logging

from es_orders.config import Settings
from es_orders.kafka.admin import ensure_topics, members_topic_spec, topic_specs
from es_orders.query.api import create_query_app
from es_orders.query.changes import ChangeFeed
from es_orders.query.members import Directory, Membership, new_instance_id
from es_orders.query.reads import describe_self
from es_orders.query.routing import Cluster
from es_orders.runtime.clients import MaterializerConfig
from es_orders.runtime.metrics import FoldCollector
from es_orders.runtime.status import StatusBoard
from es_orders.runtime.view import MaterializedView
from es_orders.runtime.workers import FoldWorkers
from es_orders.serving import serve

log = logging.getLogger(__name__)


def query_materializer_config(settings: Settings) -> MaterializerConfig:
    return MaterializerConfig(
        source_topic=settings.events_topic,
        changelog_topic=settings.state_topic,
        dlq_topic=settings.dlq_topic,
        group_id=settings.application_id,
        state_dir=settings.state_dir,
        kafka=settings.kafka_config(),
        partitions=settings.partitions,
        cache_bytes=int(settings.cache_mb * 2**20),
        max_batch=settings.max_batch,
        history=settings.history,
    )


def run_query_service(settings: Settings) -> int:
    """Serve GET /orders on ``settings.query_port`` until SIGINT/SIGTERM; the exit code.

    This process serves HTTP and reads the stores; ``settings.workers`` child processes
    fold (``runtime.workers``), so a read never waits for a fold.
    """
    ensure_topics(settings.kafka_config(), [*topic_specs(settings), members_topic_spec(settings)])
    config = query_materializer_config(settings)
    board = StatusBoard(config.state_dir, config.group_id, config.source_topic, settings.workers)
    workers = FoldWorkers(config, board, settings.workers)
    view = MaterializedView(board, settings.partitions, history=settings.history)
    instance, url = new_instance_id(), settings.query_url()
    directory = Directory()
    members = Membership(
        settings.kafka_config(),
        settings.members_topic,
        instance,
        url,
        lambda: describe_self(view),
        directory,
    )
    board.listeners.append(members.changed)  # a new assignment is published at once
    cluster = Cluster(instance, url, settings.partitions, directory)
    changes = ChangeFeed(
        settings.kafka_config(),
        settings.state_topic,
        heartbeat_s=settings.changes_heartbeat_s,
        queue_size=settings.changes_queue_size,
        max_streams=settings.changes_max_streams,
    )
    app = create_query_app(view, cluster, [FoldCollector(lambda: board.snapshot)], changes=changes)

    def started() -> None:
        log.info(
            "query service listening on %s:%d advertised_url=%s docs=%s/docs group=%s "
            "state_dir=%s workers=%d cache_mb=%g",
            settings.host,
            settings.query_port,
            url,
            url,
            settings.application_id,
            settings.state_dir,
            settings.workers,
            settings.cache_mb,
        )

    return serve(
        app,
        settings.host,
        settings.query_port,
        {"fold-workers": workers, "members": members, "changes": changes},
        on_started=started,
    )
