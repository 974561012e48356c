"""The fold's figures as Prometheus metrics, read from its workers' statuses at each scrape.

Fold workers may run in processes of their own (``runtime.workers``): a counter they kept
would never reach the service's ``GET /metrics``. What they did reaches the service in
their ``WorkerStatus``es, which the ``StatusBoard`` sums into its snapshot (including
what workers that exited had done, so the totals never go back); this collector turns the
snapshot of the moment into metric families.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from es_orders.runtime.partition import Phase
from es_orders.runtime.status import Snapshot

# Metric name, ``Counters`` field, help.
_TOTALS = (
    (
        "es_orders_events_folded_total",
        "consumed",
        "Records of the events topic the fold consumed: applied, skipped (replays, "
        "duplicates) or dead-lettered.",
    ),
    (
        "es_orders_events_replayed_total",
        "replayed",
        "Records at or below their order's stored offset, skipped (read again after a "
        "crash or a rebalance).",
    ),
    (
        "es_orders_duplicate_events_total",
        "duplicates",
        "Events skipped because their order already had their version.",
    ),
    (
        "es_orders_version_gaps_total",
        "gaps",
        "Events applied although versions were missing before them.",
    ),
    (
        "es_orders_dead_letters_total",
        "dead_letters",
        "Records that could not be folded (on the query service: sent to the dead letter "
        "topic; on the command service: logged, the query service dead-letters them).",
    ),
    (
        "es_orders_changelog_records_total",
        "changelog_records",
        "Order states written to the changelog topic (and the store) by checkpoints.",
    ),
    (
        "es_orders_restored_records_total",
        "restored_records",
        "Changelog records read to restore partitions' stores.",
    ),
)


class FoldCollector:
    """The fold's totals and each held partition's progress, from ``snapshot()`` (the
    service's ``StatusBoard.snapshot``) at the moment of a scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        counters = snapshot.counters
        for name, field, help_text in _TOTALS:
            yield CounterMetricFamily(name, help_text, value=getattr(counters, field))
        yield SummaryMetricFamily(
            "es_orders_checkpoint_duration_seconds",
            "Checkpoints of folded batches (changelog, store, group offsets) and the time "
            "they took.",
            count_value=counters.batches,
            sum_value=counters.checkpoint_seconds,
        )
        yield from _partitions(snapshot)


def _partitions(snapshot: Snapshot) -> Iterator[Metric]:
    """Gauges of each partition a worker of this instance holds, labelled by its number."""
    lag = GaugeMetricFamily(
        "es_orders_partition_lag_records",
        "Records of the events topic between the fold's position and the partition's end "
        "(as last fetched); absent before the first fetch.",
        labels=["partition"],
    )
    phase = GaugeMetricFamily(
        "es_orders_partition_phase",
        "1 for the phase the partition is in (restoring, catching-up, caught-up), 0 for "
        "the others.",
        labels=["partition", "phase"],
    )
    restored = GaugeMetricFamily(
        "es_orders_partition_restored_records",
        "Changelog records restored into the partition's store since it was assigned.",
        labels=["partition"],
    )
    restore_seconds = GaugeMetricFamily(
        "es_orders_partition_restore_duration_seconds",
        "How long the partition's restore took; absent until it has finished.",
        labels=["partition"],
    )
    history_left = GaugeMetricFamily(
        "es_orders_partition_history_rebuild_records",
        "Records of the events topic the partition's history rebuild has still to fold (0 "
        "once its history is complete); absent while no history is kept.",
        labels=["partition"],
    )
    for number, part in sorted(snapshot.held.items()):
        label = str(number)
        if part.history is not None:
            left = 0
            if part.history == "rebuilding" and part.history_target is not None:
                left = max(part.history_target - (part.history_rebuilt or 0), 0)
            history_left.add_metric([label], left)
        if part.consumed is not None and part.end is not None:
            lag.add_metric([label], max(part.end - part.consumed, 0))
        for each in Phase:
            phase.add_metric([label, each.value], 1.0 if part.phase == each.value else 0.0)
        restored.add_metric([label], part.restored_records)
        if part.restore_seconds is not None:
            restore_seconds.add_metric([label], part.restore_seconds)
    yield from (lag, phase, restored, restore_seconds, history_left)
