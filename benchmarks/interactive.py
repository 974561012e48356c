"""Latency as a client sees it: GETs while the service folds, and command-to-visible."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
from collections.abc import Callable
from functools import partial

import httpx

from benchmarks.children import QueryProcess, ServiceProcess, stopping
from benchmarks.context import Bench
from benchmarks.errors import BenchError
from benchmarks.load import (
    REQUEST_TIMEOUT,
    ConnectionPool,
    LoadResult,
    RequestFailedError,
    Response,
    open_loop,
)
from benchmarks.stats import settled
from benchmarks.topics import HeldRecords
from es_orders.workload import encoded, order_events

log = logging.getLogger(__name__)

# Keeps the service busy from the first window's start to the second's end, with margin
# for the fold slowing down under the HTTP load it now also serves.
_PRELOAD_MARGIN = 1.3
# Commands spread over this many orders: at 50/s each changes every 2 s, so they seldom
# race on one order (no If-Match here: a race would still succeed, one after the other).
_COMMAND_ORDERS = 100
# Command-to-visible polls the query service at a tenth of the time elapsed so far
# (within these bounds): a resolution of about 10%, so a fast service is timed finely
# and a slow one is not flooded with reads (their rate is in the details).
_POLL_MIN, _POLL_MAX = 0.002, 0.02
_VISIBLE_GIVE_UP = 10.0
# A GET may first wait for a free connection, then for its answer.
_GIVE_UP = 2 * REQUEST_TIMEOUT


def measure_query_latency(bench: Bench, fold_rate: float) -> None:
    """GET /orders/{id} at ``by_id_rate``, then GET /orders?limit=100, while folding.

    The service runs with ``workers`` fold workers; ``fold_rate`` is what as many folded
    in the fold phase, and sizes the backlog that keeps them busy through both windows.
    """
    options = bench.options
    windows = 2 * options.latency_seconds
    preload = int(fold_rate * windows * _PRELOAD_MARGIN) + 3 * options.orders
    preload = max(options.events, min(preload, options.latency_max_events))
    topics = bench.topics("latency")
    records = encoded(order_events(options.orders, preload, 13))
    # Held back until the service's group has settled, as in the fold phase: the
    # windows measure reads next to workers folding, not next to their rebalance.
    with HeldRecords(bench.bootstrap_servers, topics.events, records) as held:
        service = bench.query_service(
            topics,
            f"bench-{bench.run_id}-latency",
            bench.work_dir / "latency-state",
            "query-latency",
        )
        with stopping(service):
            service.wait_stats(
                "its consumer group settled",
                lambda s: settled(s, topics.partitions),
                bench.wait_seconds(0),
            )
            held.release()
            _measure_windows(bench, service, preload)
    bench.results.details["latency.preloaded_events"] = preload


def _measure_windows(bench: Bench, service: QueryProcess, preload: int) -> None:
    options = bench.options
    # Orders are created by the first events of each partition, but partitions fold
    # at their own pace: the windows start once every order can be read.
    service.wait_for(
        "every order created",
        lambda: _orders_visible(service) >= options.orders,
        bench.wait_seconds(preload),
        every=0.2,
    )
    rng = random.Random(17)
    count = round(options.by_id_rate * options.latency_seconds) + 1
    by_id = [f"/orders/o{rng.randrange(options.orders):07d}" for _ in range(count)]
    _window(bench, service, "latency.by_id", options.by_id_rate, by_id.__getitem__, preload)
    listing = "/orders?limit=100"
    _window(bench, service, "latency.list", options.list_rate, lambda _i: listing, preload)
    service.worker_stats(service.stats())  # it ran with ``workers`` fold workers throughout


def _orders_visible(service: ServiceProcess) -> int:
    """How many orders GET /orders pages through (it follows the Link headers)."""
    count, url = 0, "/orders?limit=1000"
    while True:
        try:
            response = service.client.get(url)
        except httpx.TransportError:
            return 0  # not listening yet
        if response.status_code == 503:
            return 0  # no partition restored yet: partition-unavailable
        response.raise_for_status()
        count += len(response.json())
        link = response.links.get("next")
        if link is None:
            return count
        url = link["url"]


def _window(
    bench: Bench,
    service: ServiceProcess,
    prefix: str,
    rate: float,
    path_of: Callable[[int], str],
    preload: int,
) -> None:
    async def measure() -> LoadResult:
        pool = ConnectionPool(service.port)

        async def get(i: int, _due: float) -> None:
            response = await pool.request("GET", path_of(i))
            if response.status != 200:
                raise RequestFailedError(f"GET {path_of(i)}: {response.status}")

        try:
            await pool.warm_up(path_of(0))
            return await open_loop(rate, bench.options.latency_seconds, get, give_up=_GIVE_UP)
        finally:
            pool.close()

    before = service.stats()["consumed"]
    result = asyncio.run(measure())
    after = service.stats()["consumed"]
    _record(bench, prefix, result)
    bench.results.details[f"{prefix}.folded_during_window"] = after - before
    if after >= preload:
        bench.results.note(
            f"{prefix}: the service finished folding within the window "
            f"({after - before} events folded in it), so part of it ran idle"
        )


def _record(bench: Bench, prefix: str, result: LoadResult) -> None:
    bench.results.figures.update(result.summary(prefix))
    bench.results.details.update(result.counts(prefix))
    log.info(
        "latency measured what=%s p50_ms=%.2f p99_ms=%.2f errors=%d",
        prefix,
        result.percentile(50),
        result.percentile(99),
        result.errors,
    )
    if result.errors:
        bench.results.note(f"{prefix}: {result.errors} errors, e.g. {result.error_samples[0]}")


def measure_command_to_visible(bench: Bench) -> None:
    """POST a price change at ``command_rate``; time until the query service shows it."""
    topics = bench.topics("command")
    application_id = f"bench-{bench.run_id}-command"
    work = bench.work_dir
    command = ServiceProcess(
        "command",
        bench.env(topics, application_id, work / "command-state"),
        work / "command.log",
        ["--no-simulate"],
    )
    with stopping(command):
        query = bench.query_service(topics, application_id, work / "command-query-state", "q-cmd")
        with stopping(query):
            command.wait_ready()
            query.wait_ready()
            ids = _create_orders(command, query)
            _drive_commands(bench, command, query, ids)


def _create_orders(command: ServiceProcess, query: ServiceProcess) -> list[str]:
    ids = [f"bench-{n:04d}" for n in range(_COMMAND_ORDERS)]
    for order_id in ids:
        body = {"id": order_id, "user_id": "u1", "product_id": "p1", "quantity": 1, "price": 1}
        response = command.client.post("/orders", json=body)
        if response.status_code != 201:
            raise BenchError(f"POST /orders: {response.status_code} {response.text}")
    # Orders land on different partitions, each folded on its own: wait for every one.
    for order_id in ids:
        path = f"/orders/{order_id}"
        query.wait_for(f"{path} visible", partial(_found, query, path), 30.0)
    return ids


def _found(service: ServiceProcess, path: str) -> bool:
    return service.client.get(path).status_code == 200


def _drive_commands(
    bench: Bench, command: ServiceProcess, query: ServiceProcess, ids: list[str]
) -> None:
    options = bench.options
    acknowledged_ms: list[float] = []
    tally = {"reads": 0}
    # A new price every time: an unchanged one would append nothing (idempotent).
    prices = itertools.count(1000)

    async def drive() -> LoadResult:
        loop = asyncio.get_running_loop()
        commands, reads = ConnectionPool(command.port), ConnectionPool(query.port)

        async def change_then_read(i: int, due: float) -> None:
            order_id = ids[i % len(ids)]
            body = json.dumps({"price": next(prices)}).encode()
            response = await commands.request("POST", f"/orders/{order_id}/price", body)
            if response.status != 200:
                raise RequestFailedError(f"POST price: {response.status} {response.body!r}")
            acknowledged_ms.append((loop.time() - due) * 1000)
            version = int(json.loads(response.body)["version"])
            # Until open_loop gives up on it, at due + _VISIBLE_GIVE_UP.
            while True:
                tally["reads"] += 1
                seen = await reads.request("GET", f"/orders/{order_id}")
                if seen.status == 200 and _version(seen) >= version:
                    return
                elapsed = loop.time() - due
                await asyncio.sleep(min(_POLL_MAX, max(_POLL_MIN, elapsed / 10)))

        rate, give_up = options.command_rate, _VISIBLE_GIVE_UP
        try:
            await reads.warm_up(f"/orders/{ids[0]}")
            # A second at the measured rate opens the command connections it needs.
            await open_loop(rate, 1.0, change_then_read, give_up=give_up)
            acknowledged_ms.clear()
            tally["reads"] = 0
            return await open_loop(rate, options.command_seconds, change_then_read, give_up=give_up)
        finally:
            commands.close()
            reads.close()

    result = asyncio.run(drive())
    _record(bench, "command.visible", result)
    acknowledged = LoadResult(result.rate, result.seconds, acknowledged_ms)
    bench.results.details.update(
        {
            "command.acknowledged.p50_ms": acknowledged.percentile(50),
            "command.acknowledged.p99_ms": acknowledged.percentile(99),
            "command.visible.reads_per_s": tally["reads"] / options.command_seconds,
        }
    )


def _version(response: Response) -> int:
    etag = response.headers.get("etag", "").removeprefix("W/").strip('"')
    return int(etag) if etag.isdigit() else 0
