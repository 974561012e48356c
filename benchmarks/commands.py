"""Commands through two command instances that share the events topic's partitions.

Two ``es-orders command`` instances of one application (one consumer group on the
events topic, each its own state directory and port, no simulator) each hold some of
the partitions; a command on an order the other holds is forwarded to it, and every
answer names who decided in ``Served-By``. A 2xx comes only once the deciding
instance's own fold has read its event back, so a command's latency is the forward
(for about half of them), the decision, the produce (acks=all), the broker, and the
fold's round trip.

``commands_orders`` orders are created first (POST /orders, each to either instance),
then unconditional changes of their quantity, price or product (a new value every time:
an unchanged one would append nothing) go, open loop, each to one of the two instances
at random, on random orders:

1. a warm-up, then ``commands_seconds`` at ``commands_rate``: p50 and p99
   (``commands.latency_<rate>``);
2. steps of ``commands_step_seconds`` at each of ``commands_step_rates`` in turn, up to
   the first whose p99 exceeds ``STEP_P99_MS``, or with any request not answered 2xx,
   or whose 2xx came at less than ``STEP_ACHIEVED`` of the offered rate: the highest
   step that passed is ``commands.max_rate``.

Latency runs from each request's due time (``load.open_loop``). Every status is
counted; a non-2xx or an unanswered request makes the figure invalid (the percentiles
are of the 2xx only). The load generator, both instances and the broker share the
machine's cores: the CPU each used in every window is in the details, with the
machine's total (what else ran shows there too), and how late the generator was in
sending.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.children import ServiceProcess, stopping
from benchmarks.context import Bench
from benchmarks.errors import BenchError
from benchmarks.load import (
    REQUEST_TIMEOUT,
    ConnectionPool,
    LoadResult,
    RequestFailedError,
    open_loop,
)
from es_orders.brokers import LOOPBACK, free_port
from es_orders.kafka.partitioner import partition_for

log = logging.getLogger(__name__)

# A step passes with a p99 at most this, every request answered 2xx, and 2xx at this
# share of the offered rate at least.
STEP_P99_MS = 100.0
STEP_ACHIEVED = 0.95
# Per instance: at 3,000 commands/s and 40 ms (1,500 a second to each) a pool of 64
# would already make requests queue in the generator rather than in the service.
_CONNECTIONS = 128
# The service answers within its command timeout (5 s) plus a forward's (2 s): past
# this a request counts as unanswered.
_GIVE_UP = 2 * REQUEST_TIMEOUT
_CREATE_CONCURRENCY = 16
# Between steps: the instances' overlays are pruned and their checkpoints written.
_STEP_PAUSE = 1.0
_CHANGES = ("quantity", "price", "product")
_READY = "caught-up"


def latency_key(rate: float) -> str:
    """The prefix of the fixed-rate window's figures, e.g. ``commands.latency_200``."""
    return f"commands.latency_{rate:g}"


def step_key(rate: float) -> str:
    """The prefix of one step's details, e.g. ``commands.step_1500``."""
    return f"commands.step_{rate:g}"


def measure_commands(bench: Bench) -> None:
    """Start two command instances, create the orders, run the window and the steps."""
    options = bench.options
    topics = bench.topics("commands")
    application_id = f"bench-{bench.run_id}-commands"
    instances: list[ServiceProcess] = []
    try:
        for index in range(2):
            name = f"command-{index}"
            port = free_port()
            env = {
                **bench.env(topics, application_id, bench.work_dir / f"{name}-state"),
                "ES_ORDERS_ADVERTISED_URL": f"http://{LOOPBACK}:{port}",
                "ES_ORDERS_SIMULATOR_RATE": "0",
            }
            log_path = bench.work_dir / f"{name}.log"
            instances.append(
                ServiceProcess("command", env, log_path, ["--no-simulate"], port=port, name=name)
            )
    except BaseException:
        for instance in reversed(instances):
            instance.stop()
        raise
    with stopping(*instances):
        owners = _wait_for_layout(bench, instances)
        order_ids = [f"cmd-{n:06d}" for n in range(options.commands_orders)]
        owner_of = {o: owners[partition_for(o.encode(), topics.partitions)] for o in order_ids}
        if len(set(owner_of.values())) < 2:
            raise BenchError(f"{len(order_ids)} orders are not spread over both instances")
        asyncio.run(_drive(bench, instances, order_ids, owner_of))
        if _layout(instances, topics.partitions) != owners:
            keys = [k for k in bench.results.figures if k.startswith("commands.")]
            bench.results.flag(
                keys,
                "the partitions moved between the command instances during the phase, "
                "or one is no longer ready: the figures are not of one layout",
            )
    details = bench.results.details
    details["commands.orders"] = options.commands_orders
    details["commands.partitions_of_instance_0"] = sum(
        1 for url in owners.values() if url == instances[0].url
    )


def _wait_for_layout(bench: Bench, instances: list[ServiceProcess]) -> dict[int, str]:
    """Wait until both instances are ready and each holds some partitions, caught up,
    together all of them; then until each forwards to the other. The owners."""
    partitions = bench.options.partitions
    owners: dict[int, str] = {}

    def settled() -> bool:
        nonlocal owners
        for instance in instances:
            instance.check_alive()
        layout = _layout(instances, partitions)
        if layout is None:
            return False
        owners = layout
        return True

    timeout = bench.wait_seconds(0)
    first = instances[0]
    first.wait_for("both command instances sharing every partition", settled, timeout, 0.2)
    # Each learns who holds what from the members topic: wait until a command on an
    # order of each partition, through each instance, is decided by the partition's
    # owner. The orders do not exist: each is refused (404) and appends nothing.
    probes = _probe_ids(partitions)

    def forwarding() -> bool:
        for instance in instances:
            for partition, order_id in probes.items():
                try:
                    answer = instance.client.post(
                        f"/orders/{order_id}/quantity", json={"quantity": 1}
                    )
                except httpx.TransportError:
                    return False
                if answer.headers.get("served-by") != owners[partition]:
                    return False
        return True

    first.wait_for("each command instance forwarding to the other", forwarding, timeout, 0.2)
    return owners


def _layout(instances: list[ServiceProcess], partitions: int) -> dict[int, str] | None:
    """Partition -> URL of the instance holding it, when every instance is ready and
    holds some, caught up, and together they hold each partition once; else None."""
    owners: dict[int, str] = {}
    for instance in instances:
        try:
            answer = instance.client.get("/health/ready")
        except httpx.TransportError:
            return None
        if answer.status_code != 200:
            return None
        held = {int(number): phase for number, phase in answer.json()["partitions"].items()}
        # e.g. "caught-up (0 restored)"
        if not held or not all(phase.startswith(_READY) for phase in held.values()):
            return None
        for number in held:
            if number in owners:
                return None
            owners[number] = instance.url
    return owners if sorted(owners) == list(range(partitions)) else None


def _probe_ids(partitions: int) -> dict[int, str]:
    """An id of an order that is never created, for each partition."""
    probes: dict[int, str] = {}
    for n in itertools.count():
        order_id = f"probe-{n}"
        probes.setdefault(partition_for(order_id.encode(), partitions), order_id)
        if len(probes) == partitions:
            return probes
    raise AssertionError("unreachable")


class _Cpu:
    """CPU time used since it was made: by the generator (this process), each command
    instance, the broker, everything else, and the whole machine."""

    def __init__(self, instances: list[int], broker: list[int]) -> None:
        self._instances, self._broker = instances, broker
        self._wall = time.monotonic()
        self._start = self._now()

    def _now(self) -> dict[str, float]:
        now = {"generator": time.process_time()}
        for index, pid in enumerate(self._instances):
            now[f"command_{index}"] = _process_cpu(pid)
        now["broker"] = sum(_process_cpu(pid) for pid in self._broker)
        now["machine"] = _machine_cpu()
        return now

    def cores(self) -> dict[str, float]:
        """Cores each used on average (1.0: one core all the time), by name:
        ``generator``, ``command_<i>``, ``broker``, ``other`` (what else ran on the
        machine: the system, other programs) and ``machine`` (all of them)."""
        wall = max(time.monotonic() - self._wall, 1e-9)
        now = self._now()
        used = {who: (now[who] - self._start[who]) / wall for who in now}
        known = sum(cores for who, cores in used.items() if who != "machine")
        used["other"] = max(0.0, used["machine"] - known)
        return used


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_cpu(pid: int) -> float:
    """CPU seconds ``pid`` used so far, all its threads (0.0 where /proc is not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _machine_cpu() -> float:
    """CPU seconds all cores were busy so far (not idle, not waiting for I/O)."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0
    ticks = [int(value) for value in line[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


@dataclass(slots=True)
class _Run:
    """One open-loop run of commands and what the latencies alone do not say."""

    result: LoadResult
    statuses: Counter[int]
    forwarded: int
    misrouted: int
    lag_ms: LoadResult  # how late the generator sent each request, from its due time
    achieved: float  # 2xx a second, from the first due time to the last answer
    cpu: dict[str, float]  # cores used, by whom (``_Cpu.cores``)
    # p99 (ms) of the 2xx due in each second of the run, in order: where the tail is.
    p99_by_second: list[float]

    @property
    def not_2xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    @property
    def unanswered(self) -> int:
        return self.result.errors - self.not_2xx

    def details(self, prefix: str) -> dict[str, float]:
        ok = len(self.result.latencies_ms)
        details = {
            **self.result.counts(prefix),
            f"{prefix}.ok": ok,
            f"{prefix}.unanswered": self.unanswered,
            f"{prefix}.forwarded_share": self.forwarded / ok if ok else 0.0,
            f"{prefix}.misrouted": self.misrouted,
            f"{prefix}.achieved_per_s": self.achieved,
            f"{prefix}.generator_lag_p99_ms": self.lag_ms.percentile(99),
            f"{prefix}.worst_second_p99_ms": max(self.p99_by_second, default=0.0),
            **{f"{prefix}.cpu.{who}_cores": cores for who, cores in self.cpu.items()},
        }
        details.update({f"{prefix}.status_{s}": n for s, n in sorted(self.statuses.items())})
        return details

    def failure(self) -> str:
        """What went wrong, for a note: the statuses that were not 2xx, unanswered."""
        parts = [f"{n} answered {s}" for s, n in sorted(self.statuses.items()) if s >= 300]
        if self.unanswered:
            parts.append(f"{self.unanswered} unanswered")
        sample = f", e.g. {self.result.error_samples[0]}" if self.result.error_samples else ""
        return "; ".join(parts) + sample


class _Tally:
    """What one run's requests saw, besides their latencies (``open_loop``'s)."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.forwarded = self.misrouted = 0
        self.lag_ms: list[float] = []
        self.first_due, self.last_answer = math.inf, 0.0
        self.by_second: dict[int, list[float]] = {}

    def sent(self, due: float, now: float) -> None:
        self.lag_ms.append((now - due) * 1000)
        self.first_due = min(self.first_due, due)

    def answered(self, second: int, due: float, now: float) -> None:
        self.last_answer = max(self.last_answer, now)
        self.by_second.setdefault(second, []).append((now - due) * 1000)


class _Commander:
    """Sends the changes: each on a random order, to a random one of the instances."""

    def __init__(
        self,
        bench: Bench,
        instances: list[ServiceProcess],
        order_ids: list[str],
        owner_of: dict[str, str],
    ) -> None:
        self.bench = bench
        self.pools = [ConnectionPool(instance.port, _CONNECTIONS) for instance in instances]
        self.urls = [instance.url for instance in instances]
        self.pids = [instance.pid for instance in instances]
        self.order_ids, self.owner_of = order_ids, owner_of
        self._rng = random.Random(41)
        self._values = itertools.count(2)  # quantities, prices, products: never one twice

    async def run(self, rate: float, seconds: float) -> _Run:
        """Changes at ``rate`` a second for ``seconds``, open loop."""
        loop = asyncio.get_running_loop()
        rng = self._rng
        plan = [
            (rng.randrange(len(self.pools)), rng.choice(self.order_ids), rng.choice(_CHANGES))
            for _ in range(max(1, round(rate * seconds)))
        ]
        tally = _Tally()

        async def change(i: int, due: float) -> None:
            tally.sent(due, loop.time())
            target, order_id, what = plan[i]
            value = next(self._values)
            payload = {"product_id": f"p{value}"} if what == "product" else {what: value}
            path = f"/orders/{order_id}/{what}"
            response = await self.pools[target].request("POST", path, json.dumps(payload).encode())
            tally.statuses[response.status] += 1
            if not 200 <= response.status < 300:
                raise RequestFailedError(f"POST {path}: {response.status} {response.body[:300]!r}")
            tally.answered(int(i / rate), due, loop.time())
            served = response.headers.get("served-by")
            tally.forwarded += served != self.urls[target]
            tally.misrouted += served != self.owner_of[order_id]

        cpu = _Cpu(self.pids, self.bench.broker_pids)
        result = await open_loop(rate, seconds, change, give_up=_GIVE_UP)
        used = cpu.cores()
        span = max(seconds, tally.last_answer - tally.first_due)
        by_second = [LoadResult(rate, 1, ms) for _, ms in sorted(tally.by_second.items())]
        return _Run(
            result,
            tally.statuses,
            tally.forwarded,
            tally.misrouted,
            LoadResult(rate, seconds, tally.lag_ms),
            len(result.latencies_ms) / span,
            used,
            [second.percentile(99) for second in by_second],
        )

    def close(self) -> None:
        for pool in self.pools:
            pool.close()


async def _drive(
    bench: Bench, instances: list[ServiceProcess], order_ids: list[str], owner_of: dict[str, str]
) -> None:
    options, results = bench.options, bench.results
    commander = _Commander(bench, instances, order_ids, owner_of)
    try:
        for pool in commander.pools:
            await pool.warm_up("/health/live")
        await _create_orders(bench, commander)
        rate = options.commands_rate
        if options.commands_warm_up_seconds > 0:
            await commander.run(rate, options.commands_warm_up_seconds)
        prefix = latency_key(rate)
        window = await commander.run(rate, options.commands_seconds)
        _record(bench, prefix, window)
        results.figures[f"{prefix}.p50_ms"] = window.result.percentile(50)
        results.figures[f"{prefix}.p99_ms"] = window.result.percentile(99)
        if window.result.errors:
            results.flag(
                [f"{prefix}.p50_ms", f"{prefix}.p99_ms"],
                f"{window.result.errors} of {window.result.requests} commands at {rate:g}/s "
                f"were not answered 2xx ({window.failure()}): the percentiles are of the rest",
            )
        await _steps(bench, commander)
    finally:
        commander.close()


async def _create_orders(bench: Bench, commander: _Commander) -> None:
    """POST /orders for each id, to either instance in turn; each must be a 201 from
    its owner."""
    pools, owner_of, order_ids = commander.pools, commander.owner_of, commander.order_ids
    gate = asyncio.Semaphore(_CREATE_CONCURRENCY)
    started = time.monotonic()

    async def create(n: int, order_id: str) -> None:
        body = {"id": order_id, "user_id": "u1", "product_id": "p1", "quantity": 1, "price": 1}
        async with gate:
            response = await pools[n % len(pools)].request(
                "POST", "/orders", json.dumps(body).encode(), timeout=_GIVE_UP
            )
        if response.status != 201:
            raise BenchError(f"POST /orders {order_id}: {response.status} {response.body!r}")
        served = response.headers.get("served-by")
        if served != owner_of[order_id]:
            raise BenchError(f"POST /orders {order_id}: Served-By {served}, not its owner")

    try:
        await asyncio.gather(*(create(n, o) for n, o in enumerate(order_ids)))
    except RequestFailedError as exc:
        raise BenchError(f"creating the orders: {exc}") from exc
    bench.results.details["commands.create_seconds"] = time.monotonic() - started
    log.info("commands: created orders=%d via=%s", len(order_ids), commander.urls)


async def _steps(bench: Bench, commander: _Commander) -> None:
    """Open-loop steps at rising rates, up to the first that fails; the highest passed."""
    options, results = bench.options, bench.results
    passed: _Run | None = None
    failed_at: float | None = None
    for rate in options.commands_step_rates:
        await asyncio.sleep(_STEP_PAUSE)
        step = await commander.run(rate, options.commands_step_seconds)
        _record(bench, step_key(rate), step)
        reasons = []
        if step.result.errors:
            reasons.append(f"{step.result.errors} not 2xx ({step.failure()})")
        p99 = step.result.percentile(99)
        if p99 > STEP_P99_MS:
            reasons.append(f"p99 {p99:.1f} ms > {STEP_P99_MS:g} ms")
        if step.achieved < STEP_ACHIEVED * rate:
            reasons.append(f"2xx at {step.achieved:.0f}/s < {STEP_ACHIEVED:.0%} of offered")
        if reasons:
            failed_at = rate
            results.note(f"commands: the step at {rate:g}/s failed: {'; '.join(reasons)}")
            break
        passed = step
    details = results.details
    if failed_at is not None:
        details["commands.max_rate.first_failed_rate"] = failed_at
    else:
        results.note(
            f"commands: every step passed, up to {options.commands_step_rates[-1]:g}/s; "
            "the instances may sustain more"
        )
    if passed is None:
        # A measure (below the first step), but there is no p99 "at that rate".
        results.figures["commands.max_rate"] = 0.0
        results.figures["commands.max_rate_p99_ms"] = 0.0
        results.flag(
            ["commands.max_rate_p99_ms"],
            f"not even the first step ({options.commands_step_rates[0]:g}/s) passed",
        )
        return
    results.figures["commands.max_rate"] = passed.result.rate
    results.figures["commands.max_rate_p99_ms"] = passed.result.percentile(99)
    details["commands.max_rate.achieved_per_s"] = passed.achieved


def _record(bench: Bench, prefix: str, run: _Run) -> None:
    bench.results.details.update(run.details(prefix))
    log.info(
        "commands measured what=%s rate=%g p50_ms=%.2f p99_ms=%.2f max_ms=%.2f achieved=%.0f "
        "errors=%d statuses=%s forwarded=%d cores=%s p99_ms_by_second=%s",
        prefix,
        run.result.rate,
        run.result.percentile(50),
        run.result.percentile(99),
        max(run.result.latencies_ms, default=0.0),
        run.achieved,
        run.result.errors,
        dict(run.statuses),
        run.forwarded,
        {who: round(cores, 2) for who, cores in run.cpu.items()},
        [round(ms) for ms in run.p99_by_second],
    )
    if run.misrouted:
        bench.results.note(
            f"{prefix}: {run.misrouted} commands were not Served-By the owner of their "
            "order's partition when the phase started"
        )
