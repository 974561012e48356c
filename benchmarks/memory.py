"""Memory of a fold worker: its peak RSS with a fixed cache, for few orders and for many.

Each count of orders (``memory_orders``) is produced to a fresh topic, one event per
order, and folded by a service with one fold worker (which so holds every order) and
``--cache-mb`` as set for the run. What the phase shows is whether a worker's memory is
bounded by its cache plus a fixed overhead, whatever the number of orders it holds:
every order is in its store on disk, the cache holds only what fits.
"""

from __future__ import annotations

import logging

from benchmarks.children import stopping
from benchmarks.context import Bench, memory_key
from benchmarks.ours import new_service, record_workers
from benchmarks.stats import MIB
from benchmarks.topics import produce
from es_orders.workload import encoded, order_events

log = logging.getLogger(__name__)


def measure_memory(bench: Bench) -> None:
    """Fold each of ``memory_orders`` orders with one worker; its peak RSS for each."""
    counts = sorted(bench.options.memory_orders)
    for orders in counts:
        _fold_orders(bench, orders)
    figures = bench.results.figures
    smallest, largest = (f"{memory_key(n)}.worker_0.peak_rss_mib" for n in (counts[0], counts[-1]))
    bench.results.details["memory.growth_mib"] = figures[largest] - figures[smallest]


def _fold_orders(bench: Bench, orders: int) -> None:
    key = memory_key(orders)
    topics = bench.topics(f"memory-{orders}")
    produce(bench.bootstrap_servers, topics.events, encoded(order_events(orders, orders, 23)))
    service = new_service(bench, topics, f"memory-{orders}", workers=1)
    with stopping(service):
        stats = service.wait_stats(
            f"{orders} orders folded",
            lambda s: s["consumed"] >= orders,
            bench.wait_seconds(orders),
        )
        workers = service.worker_stats(stats)
    record_workers(bench, key, workers)
    bench.results.details[f"{key}.seconds"] = stats["last_checkpoint_at"] - stats["first_record_at"]
    worker = workers[0]
    log.info(
        "memory measured orders=%d peak_rss_mib=%.1f cache_entries=%d cache_mib=%.1f",
        orders,
        worker.peak_rss_bytes / MIB,
        worker.cache_entries,
        worker.cache_bytes / MIB,
    )
