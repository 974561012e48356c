"""Latency as a client sees it: GETs while the service folds, GETs one query instance
forwards to another, and command-to-visible."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
from collections.abc import Awaitable, Callable
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
from benchmarks.topics import HeldRecords, produce
from es_orders.kafka.partitioner import partition_for
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
# The forwarded phase's orders each get this many events (created, then changed).
_FORWARDED_EVENTS_PER_ORDER = 3
# Forwarded GETs sent one at a time before its windows: the first makes the instance's
# client session and connection to the other, so no window pays for it. One at a time,
# so the instance keeps one connection to the other, not a pool's worth: how many it
# needs is the measured load's to decide.
_FORWARD_WARM_UP = 20
# How long an instance may take to serve what a window it could not keep up with left.
_DRAIN_WITHIN = 120.0


def measure_query_latency(bench: Bench, fold_rate: float) -> None:
    """GET /orders/{id} at ``by_id_rate``, then GET /orders?limit=100, while folding.

    The service runs with ``workers`` fold workers; ``fold_rate`` is what as many folded
    in the fold phase, and sizes the backlog that keeps them busy through both windows
    (``math.inf`` when unknown: then ``latency_max_events``).
    """
    options = bench.options
    windows = 2 * options.latency_seconds
    # ``fold_rate`` is infinite when unknown (the fold phase did not run): the most.
    wanted = min(fold_rate * windows * _PRELOAD_MARGIN, options.latency_max_events)
    preload = max(options.events, min(int(wanted) + 3 * options.orders, options.latency_max_events))
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


def measure_forwarded_latency(bench: Bench) -> None:
    """GET /orders/{id} at ``forwarded_rate`` to instance A of two, idle: for orders the
    other instance B holds (A forwards every one to B), and, the baseline, for orders A
    holds itself.

    A and B are instances of one query application (one consumer group, one fold worker
    each, each its own state directory and port). Every event is folded before the
    windows start, so they measure the forwarding hop next to nothing else; the events
    folded during them are in the details (0 when idle, as it should be). Every answer
    must name the instance meant to serve it in ``Served-By`` (B for a forwarded GET, A
    for a local one); any other answer counts as an error, and as misrouted.
    """
    options = bench.options
    topics = bench.topics("forwarded")
    events = _FORWARDED_EVENTS_PER_ORDER * options.orders
    produce(
        bench.bootstrap_servers, topics.events, encoded(order_events(options.orders, events, 29))
    )
    application_id = f"bench-{bench.run_id}-forwarded"
    a, b = bench.query_instances(topics, application_id, "query-forwarded", 2, workers=1)
    with stopping(a, b):
        owners = _wait_for_cluster(bench, a, b, events)
        a.wait_for(
            "every order visible through it",
            lambda: _orders_visible(a) >= options.orders,
            bench.wait_seconds(events),
            every=0.2,
        )
        ids: dict[str, list[str]] = {a.url: [], b.url: []}
        for n in range(options.orders):
            order_id = f"o{n:07d}"
            ids[owners[partition_for(order_id.encode(), topics.partitions)]].append(order_id)
        if not ids[a.url] or not ids[b.url]:
            raise BenchError(f"{options.orders} orders are not spread over both instances")
        before = [a.stats()["consumed"], b.stats()["consumed"]]
        local, forwarded = _forwarded_windows(bench, a, ids[a.url], ids[b.url], b.url)
        _record(bench, "latency.local", local)
        _record(bench, "latency.forwarded", forwarded)
        # An instance that could not keep up still serves what the load left it (each
        # request given up on is still forwarded): its answers wait until it is done.
        after: list[int] = []
        for service in (a, b):
            stats = service.wait_stats("its backlog served", lambda _s: True, _DRAIN_WITHIN)
            service.worker_stats(stats)  # one fold worker each, never replaced
            after.append(stats["consumed"])
        if _cluster_view(a, topics.partitions, {a.url, b.url}) != owners:
            bench.results.note(
                "latency.forwarded: the partitions moved between the instances during the "
                "windows, or A no longer sees both ready and caught up; the figures are not "
                "of one layout"
            )
    figures, details = bench.results.figures, bench.results.details
    for q in ("p50", "p99"):
        baseline = figures[f"latency.local.{q}_ms"]
        if baseline > 0:
            figures[f"latency.forwarded.{q}_vs_local"] = (
                figures[f"latency.forwarded.{q}_ms"] / baseline
            )
    folded = sum(after) - sum(before)
    details["latency.forwarded.folded_during_windows"] = folded
    details["latency.forwarded.orders"] = options.orders
    details["latency.forwarded.partitions_of_other"] = sum(
        1 for url in owners.values() if url == b.url
    )
    if folded:
        bench.results.note(
            f"latency.forwarded: {folded} events were folded during the windows, which are "
            "labelled idle"
        )


def _wait_for_cluster(
    bench: Bench, a: QueryProcess, b: QueryProcess, events: int
) -> dict[int, str]:
    """Wait until both instances are ready and their /cluster views agree: every
    partition owned by one of them, both owning some, every partition caught up.
    The owners (partition -> URL)."""
    partitions, urls = bench.options.partitions, {a.url, b.url}
    agreed: dict[int, str] = {}

    def check() -> bool:
        nonlocal agreed
        b.check_alive()
        views = [_cluster_view(service, partitions, urls) for service in (a, b)]
        if views[0] is None or views[0] != views[1]:
            return False
        agreed = views[0]
        return True

    timeout = bench.wait_seconds(events)
    for service in (a, b):
        service.wait_ready(timeout)
    a.wait_for("both instances agreeing on who owns each partition", check, timeout, every=0.2)
    return agreed


def _cluster_view(
    service: ServiceProcess, partitions: int, urls: set[str]
) -> dict[int, str] | None:
    """The owners ``service``'s GET /cluster names when they are exactly ``urls``, each
    owning some partition, all ready and caught up; None while they are not (yet)."""
    try:
        response = service.client.get("/cluster")
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    body = response.json()
    members = body["members"]
    if {m["url"] for m in members} != urls or not all(m["ready"] for m in members):
        return None
    phases = [p["phase"] for m in members for p in m["partitions"]]
    if len(phases) != partitions or any(phase != "caught-up" for phase in phases):
        return None
    owners = {int(number): url for number, url in body["owners"].items()}
    if sorted(owners) != list(range(partitions)) or set(owners.values()) != urls:
        return None
    return owners


def _forwarded_windows(
    bench: Bench, a: ServiceProcess, local_ids: list[str], remote_ids: list[str], b_url: str
) -> tuple[LoadResult, LoadResult]:
    """GETs to ``a`` for orders it holds, then for orders ``b_url`` holds; both results.

    The local window comes first and the two never take turns: a forwarded window the
    instance cannot keep up with leaves it a backlog (requests the client gave up on are
    still forwarded), which would be in whatever window followed it.
    """
    options = bench.options
    rate, seconds = options.forwarded_rate, options.latency_seconds
    rng = random.Random(23)
    count = round(rate * seconds) + 1
    local = [f"/orders/{rng.choice(local_ids)}" for _ in range(count)]
    remote = [f"/orders/{rng.choice(remote_ids)}" for _ in range(count)]

    misrouted = {a.url: 0, b_url: 0}

    async def measure() -> tuple[LoadResult, LoadResult]:
        pool = ConnectionPool(a.port)

        def getter(paths: list[str], served_by: str) -> Callable[[int, float], Awaitable[None]]:
            async def get(i: int, _due: float) -> None:
                response = await pool.request("GET", paths[i])
                if response.status != 200:
                    raise RequestFailedError(f"GET {paths[i]}: {response.status}")
                server = response.headers.get("served-by")
                if server != served_by:
                    misrouted[served_by] += 1
                    raise RequestFailedError(f"GET {paths[i]}: Served-By {server}, not {served_by}")

            return get

        try:
            await pool.warm_up(local[0])
            for path in remote[:_FORWARD_WARM_UP]:
                await pool.request("GET", path)
            give_up = _GIVE_UP
            local_result = await open_loop(rate, seconds, getter(local, a.url), give_up=give_up)
            remote_result = await open_loop(rate, seconds, getter(remote, b_url), give_up=give_up)
            return local_result, remote_result
        finally:
            pool.close()

    local_result, remote_result = asyncio.run(measure())
    details = bench.results.details
    details["latency.local.misrouted"] = misrouted[a.url]
    details["latency.forwarded.misrouted"] = misrouted[b_url]
    return local_result, remote_result


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
