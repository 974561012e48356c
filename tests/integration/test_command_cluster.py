"""Several ``es-orders command`` instances deciding as one, with the event log as judge.

Three command instances share the events topic's partitions (one consumer group, a state
directory each); a command on an order another instance holds is forwarded to it, and
the instance that decides appends the event and answers only once its own fold applied
it (the first event of each version of an order, in partition order). Against the
session broker, over HTTP as clients do:

- 20 clients race the same conditional price change (``If-Match: "1"``) on one order of
  each partition, spread over the three instances: exactly one 200 and nineteen 412s
  naming version 2, and the log's fold is at version 2 with the winner's price;
- a minute of mixed writes (conditional and unconditional changes of a few hot orders,
  creates of new ones, a third with an ``Idempotency-Key`` retried once or twice on any
  instance) while a command instance is SIGKILLed every ~10 s and restarted on its state
  directory. Then every answer is held against the log:

  - only 200, 201, 409, 412 and 503 (with ``Retry-After``), and connection errors only
    from instances that were killed;
  - the log has no version gap; each of its applied events (the first of its version)
    comes from one request the test sent, and no request (no ``Idempotency-Key``) is
    applied twice;
  - every 2xx names the partition and offset of the applied event of its version, made
    by that very request, and no two first-hand 2xx share a version; a replayed answer
    (``Idempotent-Replayed``) repeats the first 2xx of its key;
  - every 412 was a real conflict: a version after the one the client named exists, and
    another request made it; a 409 names an order another request created;
  - a query instance, and every command instance, answer each order as the log's fold;
  - 2xx came through and were decided by every slot, some were forwarded, and at least
    one instance was killed.

Every request and answer of the minute is written to ``calls.json`` in the test's
temporary directory; a summary is printed.

And a writer outside the command service appends versions of one order straight to the
topic while clients change it: events of the command service lose races in the log (the
test fails unless some do), and still every 2xx names an event the log kept, made by its
request, every 412 names a later version, and every 503 is ``order-contended``.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from es_orders.codec import LegacyUpdate, decode_record, encode_event, state_to_dict
from es_orders.domain import (
    Event,
    OrderCreated,
    OrderState,
    Outcome,
    PriceChanged,
    QuantityChanged,
    evolve,
    fold,
)
from es_orders.kafka.partitioner import partition_for
from tests.integration.runtime_support import read_all
from tests.integration.service_support import Service
from tests.vectors import normalize_state

pytestmark = pytest.mark.integration

PARTITIONS = 3
INSTANCES = 3
PROBLEMS = "https://es-orders.dev/problems/"
ORDER = {"user_id": "u1", "product_id": "57", "quantity": 2, "price": 1299}
# Three command instances, a query instance and the broker start on two shared cores.
READY_S = 90.0
# Longer than a command may take anywhere (its 5 s command timeout, plus the 2 s a
# forward may add): a request still unanswered then is a hang, not a slow answer.
CLIENT_TIMEOUT_S = 10.0
# The racing clients: 20 at once on one order, spread over the instances.
RACERS = 20
# The chaos run: how long clients write, how many, how often an instance is killed.
TRAFFIC_S = 60.0
CLIENTS = 6
CHAOS_EVERY_S = 10.0
HOT_PER_PARTITION = 2  # hot orders, so that every instance decides some and races
CREATE_SHARE = 0.15  # of requests: a create of a new order
CONDITIONAL_SHARE = 0.45  # a change with If-Match; the rest are unconditional changes
KEYED_SHARE = 0.3  # of requests: carry an Idempotency-Key, and are retried once or twice
# After the last client stopped: how long the query instance may take to fold the rest.
SETTLE_S = 30.0
# The 503s the command service answers (each with Retry-After).
UNAVAILABLE = {
    "order-in-doubt",
    "partition-unavailable",
    "not-ready",
    "order-contended",
    "command-timeout",
    "write-not-acknowledged",
}

StartCommand = Callable[..., Service]


def partition_of(order_id: str) -> int:
    return partition_for(order_id.encode(), PARTITIONS)


def ids_per_partition(prefix: str, per: int) -> list[str]:
    """Ids ``prefix-N``, ``per`` of them in each partition."""
    ids: list[str] = []
    counts: Counter[int] = Counter()
    n = 0
    while len(ids) < per * PARTITIONS:
        order_id = f"{prefix}-{n}"
        if counts[partition_of(order_id)] < per:
            counts[partition_of(order_id)] += 1
            ids.append(order_id)
        n += 1
    return ids


def slug_of(body: Any) -> str | None:
    """The problem's slug, or None for a body that is no es-orders problem."""
    if not isinstance(body, dict) or not str(body.get("type", "")).startswith(PROBLEMS):
        return None
    return str(body["type"]).removeprefix(PROBLEMS)


def json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


# -- the services -------------------------------------------------------------------------


def start_instance(start_command: StartCommand, tmp_path: Path, slot: int) -> Service:
    """Command instance ``slot``: its own state directory (kept across its restarts), no
    simulator, and a short session so that a killed instance's partitions move on soon."""
    return start_command(
        "--no-simulate",
        ES_ORDERS_STATE_DIR=str(tmp_path / f"c{slot}"),
        ES_ORDERS_KAFKA__SESSION_TIMEOUT_MS="3000",
        ES_ORDERS_KAFKA__HEARTBEAT_INTERVAL_MS="500",
    )


def logs_of(services: Iterable[Service], chars: int = 2500) -> str:
    return "\n".join(f"--- {s.url} (pid {s.pid}):\n{s.log_tail(chars)}" for s in services)


def wait_holding(services: list[Service], timeout: float = READY_S) -> dict[int, str]:
    """Wait until every instance is ready and holds a partition of its own, and every
    partition is held; the holder of each partition."""
    deadline = time.monotonic() + timeout
    while True:
        problems: list[str] = []
        holders: dict[int, str] = {}
        for service in services:
            if service.process.poll() is not None:
                raise AssertionError(
                    f"{service.url} exited with {service.process.returncode}\n{logs_of(services)}"
                )
            try:
                response = service.get("/health/ready")
            except httpx.HTTPError as exc:
                problems.append(f"{service.url}: {exc!r}")
                continue
            if response.status_code != 200:
                problems.append(f"{service.url}: {response.status_code} {response.text}")
                continue
            held = [int(number) for number in response.json()["partitions"]]
            if not held:
                problems.append(f"{service.url}: holds no partition")
            for number in held:
                if number in holders:
                    problems.append(f"{number} held by {holders[number]} and {service.url}")
                holders[number] = service.url
        if not problems and sorted(holders) == list(range(PARTITIONS)):
            return holders
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not each holding a partition in {timeout} s: {problems} {holders}\n"
                f"{logs_of(services)}"
            )
        time.sleep(0.2)


def create_orders(services: list[Service], ids: list[str], timeout: float = READY_S) -> None:
    """Create each order, through each instance in turn (forwarded where another holds
    it), with an Idempotency-Key: a 503 (an instance that has not heard of the others
    yet) is retried with it until the order is created."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as http:
        for n, order_id in enumerate(ids):
            headers = {"Idempotency-Key": f"setup-{order_id}"}
            for attempt in range(1_000_000):
                service = services[(n + attempt) % len(services)]
                response = http.post(
                    f"{service.url}/orders", json={"id": order_id, **ORDER}, headers=headers
                )
                if response.status_code == 201:
                    assert response.json()["version"] == 1, response.text
                    break
                assert response.status_code == 503, (order_id, response.status_code, response.text)
                assert time.monotonic() < deadline, (
                    f"{order_id} not created in {timeout} s: {response.text}\n{logs_of(services)}"
                )
                time.sleep(0.2)


# -- the log and its fold -----------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """The record a version of an order came from: the first of that version."""

    partition: int
    offset: int
    event: Event


@dataclass
class OrderLog:
    applied: dict[int, Applied]  # version -> its record
    state: OrderState
    duplicates: int  # later records of a version already applied: races lost
    gaps: list[int]  # versions applied after a missing one


def read_log(kafka_config: dict[str, Any], topic: str) -> dict[str, OrderLog]:
    """Every record of the events topic, folded per order in partition order as the
    services' fold does (``evolve``: the first event of each version), cross-checked
    with the project's own ``fold``."""
    records: dict[str, list[tuple[int, int, Event]]] = defaultdict(list)
    for message in read_all(kafka_config, topic, PARTITIONS):
        decoded = decode_record(message.key(), message.value(), message.timestamp()[1])
        assert not isinstance(decoded, LegacyUpdate), decoded
        # The command service places keys as the Java client does: routing relies on it.
        assert message.partition() == partition_of(decoded.order_id), decoded
        records[decoded.order_id].append((message.partition(), message.offset(), decoded))
    logs: dict[str, OrderLog] = {}
    for order_id, entries in records.items():
        entries.sort(key=lambda entry: entry[1])
        state: OrderState | None = None
        applied: dict[int, Applied] = {}
        duplicates, gaps = 0, []
        for partition, offset, event in entries:
            evolved = evolve(state, event)
            if evolved.outcome is Outcome.DUPLICATE:
                duplicates += 1
                continue
            if evolved.outcome is Outcome.GAP:
                gaps.append(event.version)
            applied[event.version] = Applied(partition, offset, event)
            state = evolved.state
        folded = fold(event for _, _, event in entries)
        assert (folded.state, folded.duplicates, folded.gaps) == (state, duplicates, len(gaps))
        assert state is not None
        logs[order_id] = OrderLog(applied, state, duplicates, gaps)
    return logs


def expected_state(order: OrderLog) -> dict[str, Any]:
    return normalize_state(state_to_dict(order.state))


# -- racing conditional changes -----------------------------------------------------------


def race(services: list[Service], order_id: str) -> list[tuple[int, str, int, httpx.Response]]:
    """``RACERS`` clients send ``If-Match: "1"`` price changes (each its own price) to
    the instances in turn, released together; (racer, instance, price, answer) each."""
    barrier = threading.Barrier(RACERS)
    answers: list[tuple[int, str, int, httpx.Response]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def racer(n: int) -> None:
        url = services[n % len(services)].url
        price = 5000 + n
        try:
            with httpx.Client(timeout=30) as http:
                http.get(f"{url}/health/live")  # connected before the race starts
                barrier.wait(30)
                response = http.post(
                    f"{url}/orders/{order_id}/price",
                    json={"price": price},
                    headers={"If-Match": '"1"'},
                )
            with lock:
                answers.append((n, url, price, response))
        except BaseException as exc:
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    assert len(answers) == RACERS, f"{len(answers)} of {RACERS} racers answered"
    return answers


def test_racing_conditional_changes_across_instances_get_one_success(
    start_command: StartCommand,
    tmp_path: Path,
    kafka_config: dict[str, Any],
    topics: dict[str, str],
) -> None:
    services = [start_instance(start_command, tmp_path, slot) for slot in range(INSTANCES)]
    holders = wait_holding(services)
    ids = ids_per_partition("race", 1)
    create_orders(services, ids)
    winners: dict[str, tuple[int, httpx.Response]] = {}
    for order_id in ids:
        answers = race(services, order_id)
        statuses = Counter(response.status_code for _, _, _, response in answers)
        told = [
            (n, url, r.status_code, r.headers.get("served-by"), r.text) for n, url, _, r in answers
        ]
        assert statuses == {200: 1, 412: RACERS - 1}, (order_id, told, logs_of(services))
        for _, url, price, response in answers:
            body = response.json()
            # Whoever was asked, the answer names the instance that decided.
            assert response.headers.get("served-by") in set(holders.values()), (url, told)
            if response.status_code == 200:
                winners[order_id] = (price, response)
                assert body["id"] == order_id, body
                assert body["version"] == 2, body
                assert body["partition"] == partition_of(order_id), body
                assert response.headers["etag"] == '"2"', response.headers
            else:
                assert slug_of(body) == "version-conflict", body
                assert (body["expected_version"], body["current_version"]) == (1, 2), body
                assert response.headers["etag"] == '"2"', response.headers
        forwarded = [url for _, url, _, r in answers if r.headers["served-by"] != url]
        assert forwarded, f"no racer's command was forwarded: {told}"

    logs = read_log(kafka_config, topics["events"])
    for order_id in ids:
        price, response = winners[order_id]
        order = logs[order_id]
        assert not order.gaps, (order_id, order)
        assert (order.state.version, order.state.price) == (2, price), (order_id, order.state)
        record = order.applied[2]
        body = response.json()
        assert (record.partition, record.offset) == (body["partition"], body["offset"]), (
            order_id,
            record,
            body,
        )
        assert isinstance(record.event, PriceChanged), record
        print(f"race on {order_id}: {order.duplicates} losing event(s) appended and dropped")
    for service in services:
        assert service.stop() == 0, service.log_tail()


# -- a minute of writes while instances are killed ------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request a client means to make (its retries share it): a create, or a change
    of ``field`` to ``value``, conditional on ``if_match`` or not. Values are unique in
    the test, so the log's event names the request it came from."""

    ident: str
    kind: str  # "create", "conditional" or "change"
    order_id: str
    path: str
    body: dict[str, Any]
    field: str  # "price" or "quantity" (a create: its price)
    value: int
    if_match: int | None
    key: str | None


@dataclass
class Call:
    """One attempt at a request and what came of it."""

    request: Request
    attempt: int
    asked: str  # the instance's URL
    slot: int
    started: float  # seconds since the traffic began
    ended: float
    status: int | None = None
    body: Any = None
    served_by: str | None = None
    retry_after: str | None = None
    etag: str | None = None
    replayed: bool = False
    error: str | None = None  # a connection error: no answer

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        r = self.request
        return (
            f"[{r.ident}#{self.attempt} {r.kind} {r.order_id} {r.field}={r.value} "
            f"if_match={r.if_match} key={r.key} asked={self.asked} "
            f"t={self.started:.2f}-{self.ended:.2f}] -> {self.status or self.error} "
            f"served_by={self.served_by} replayed={self.replayed} body={self.body}"
        )


class Fleet:
    """The command instances, one per slot, as the chaos loop replaces them."""

    def __init__(self, start: Callable[[int], Service]) -> None:
        self._start = start
        self._lock = threading.Lock()
        self.current = [start(slot) for slot in range(INSTANCES)]
        self.every = list(self.current)
        self._running = list(self.current)
        self.slot_of = {service.url: slot for slot, service in enumerate(self.current)}
        self.killed: set[str] = set()  # URLs of instances SIGKILLed
        self.kills: list[tuple[float, int, str]] = []  # (when, slot, URL)

    def pick(self, rng: random.Random) -> Service:
        """A random instance of those running."""
        with self._lock:
            return rng.choice(self._running)

    def replace(self, slot: int, at: float) -> None:
        """SIGKILL the slot's instance and start another on its state directory; return
        once it is ready (clients reach it as soon as it listens)."""
        victim = self.current[slot]
        with self._lock:
            self._running.remove(victim)
            self.killed.add(victim.url)
            self.kills.append((at, slot, victim.url))
        victim.kill9()
        replacement = self._start(slot)
        with self._lock:
            self.slot_of[replacement.url] = slot
            self.current[slot] = replacement
            self.every.append(replacement)
        replacement.wait_for(f"{replacement.url}/health/live", READY_S)
        with self._lock:
            self._running.append(replacement)
        replacement.wait_ready(READY_S)


class Traffic:
    """The clients' threads and the chaos loop, and what each saw."""

    def __init__(self, fleet: Fleet, hot: list[str]) -> None:
        self.fleet = fleet
        self.hot = hot
        self.calls: list[Call] = []
        self.failures: list[BaseException] = []
        self._lock = threading.Lock()
        self.began = time.monotonic()
        self.stop = threading.Event()

    def now(self) -> float:
        return time.monotonic() - self.began

    def chaos(self, until: float) -> None:
        """Every ``CHAOS_EVERY_S`` until ``until`` (seconds since the traffic began),
        replace the next slot's instance.

        Runs on the test's main thread: a service is spawned with ``PR_SET_PDEATHSIG``,
        which Linux fires when the *thread* that started it ends, so a replacement started
        by a thread of its own would be sent SIGTERM as that thread finished.
        """
        slot = 0
        while (left := until - self.now()) > 0:
            if left <= CHAOS_EVERY_S:
                time.sleep(left)
                return
            time.sleep(CHAOS_EVERY_S)
            self.fleet.replace(slot, self.now())
            slot = (slot + 1) % INSTANCES

    def client(self, number: int) -> None:
        rng = random.Random(number)
        seen = dict.fromkeys(self.hot, 1)  # the version this client last saw of each
        # A connection per request: a pooled connection an instance closes as it is
        # reused would be a connection error the service is not to blame for.
        limits = httpx.Limits(max_keepalive_connections=0)
        try:
            with httpx.Client(timeout=CLIENT_TIMEOUT_S, limits=limits) as http:
                for n in range(1_000_000):
                    if self.stop.is_set():
                        return
                    request = self.next_request(rng, f"{number}-{n}", seen)
                    attempts = 1 + (rng.choice((1, 2)) if request.key is not None else 0)
                    for attempt in range(attempts):
                        if attempt:
                            time.sleep(rng.uniform(0.05, 0.5))
                        call = self.send(http, self.fleet.pick(rng), request, attempt)
                        with self._lock:
                            self.calls.append(call)
                        learn(seen, call)
        except BaseException as exc:
            with self._lock:
                self.failures.append(exc)

    def next_request(self, rng: random.Random, ident: str, seen: dict[str, int]) -> Request:
        client, n = (int(part) for part in ident.split("-"))
        value = 10_000 + client * 1_000_000 + n  # unique in the test
        key = str(uuid.uuid4()) if rng.random() < KEYED_SHARE else None
        roll = rng.random()
        if roll < CREATE_SHARE:
            order_id = f"new-{ident}"
            body = {"id": order_id, **ORDER, "price": value}
            return Request(ident, "create", order_id, "/orders", body, "price", value, None, key)
        order_id = rng.choice(self.hot)
        field = rng.choice(("price", "quantity"))
        conditional = roll < CREATE_SHARE + CONDITIONAL_SHARE
        return Request(
            ident,
            "conditional" if conditional else "change",
            order_id,
            f"/orders/{order_id}/{field}",
            {field: value},
            field,
            value,
            seen[order_id] if conditional else None,
            key,
        )

    def send(self, http: httpx.Client, service: Service, request: Request, attempt: int) -> Call:
        headers = {}
        if request.if_match is not None:
            headers["If-Match"] = f'"{request.if_match}"'
        if request.key is not None:
            headers["Idempotency-Key"] = request.key
        slot = self.fleet.slot_of[service.url]
        started = self.now()
        try:
            response = http.post(f"{service.url}{request.path}", json=request.body, headers=headers)
        except httpx.TransportError as exc:
            error = f"{type(exc).__name__}: {exc}"
            return Call(request, attempt, service.url, slot, started, self.now(), error=error)
        return Call(
            request,
            attempt,
            service.url,
            slot,
            started,
            self.now(),
            status=response.status_code,
            body=json_or_text(response),
            served_by=response.headers.get("served-by"),
            retry_after=response.headers.get("retry-after"),
            etag=response.headers.get("etag"),
            replayed=response.headers.get("idempotent-replayed") == "true",
        )


def learn(seen: dict[str, int], call: Call) -> None:
    """What a client knows of its order's version after an answer."""
    order_id = call.request.order_id
    if order_id not in seen or not isinstance(call.body, dict):
        return
    if call.ok:
        seen[order_id] = max(seen[order_id], int(call.body["version"]))
    elif call.status == 412:
        seen[order_id] = int(call.body["current_version"])


def made_by(event: Event, request: Request) -> bool:
    """Whether ``event`` is the one ``request`` asks for (values are unique in the test)."""
    key = event.idempotency.key if event.idempotency is not None else None
    if key != request.key or event.order_id != request.order_id:
        return False
    if request.kind == "create":
        return isinstance(event, OrderCreated) and event.price == request.value
    if request.field == "price":
        return isinstance(event, PriceChanged) and event.price == request.value
    return isinstance(event, QuantityChanged) and event.quantity == request.value


def check_statuses(calls: list[Call], killed: set[str]) -> list[str]:
    """Only the answers the service promises, and no answer only from a killed instance."""
    problems = []
    for call in calls:
        kind, slug = call.request.kind, slug_of(call.body)
        match call.status:
            case None if call.asked in killed:
                continue  # unreachable: the instance was killed
            case None:
                problems.append(f"no answer from an instance never killed: {call.describe()}")
            case 201 if kind == "create":
                continue
            case 200 if kind != "create":
                continue
            case 409 if kind == "create" and slug == "order-exists":
                continue
            case 412 if kind == "conditional" and slug == "version-conflict":
                continue
            case 503 if slug in UNAVAILABLE and call.retry_after is not None:
                continue
            case _:
                problems.append(f"unexpected answer: {call.describe()}")
    return problems


def check_log(logs: dict[str, OrderLog], requests: list[Request]) -> list[str]:
    """No gap; each applied event comes from a request the test sent, none applied twice,
    and no Idempotency-Key in two applied events of an order."""
    problems = []
    by_value = {(r.order_id, r.value): r for r in requests}
    made: Counter[str] = Counter()
    for order_id, order in sorted(logs.items()):
        if order.gaps:
            problems.append(f"{order_id}: versions {order.gaps} applied after a gap")
        keys = Counter(
            a.event.idempotency.key for a in order.applied.values() if a.event.idempotency
        )
        problems += [f"{order_id}: key {k} applied {n} times" for k, n in keys.items() if n > 1]
        for version, record in sorted(order.applied.items()):
            event = record.event
            value = (
                event.price
                if isinstance(event, OrderCreated | PriceChanged)
                else event.quantity
                if isinstance(event, QuantityChanged)
                else None
            )
            request = by_value.get((order_id, value)) if value is not None else None
            if request is None or not made_by(event, request):
                problems.append(f"{order_id} v{version}: from no request sent: {record}")
            else:
                made[request.ident] += 1
    problems += [f"request {i} applied {n} times" for i, n in made.items() if n > 1]
    return problems


def check_answers(calls: list[Call], logs: dict[str, OrderLog]) -> list[str]:
    """Each 2xx is in the log where it says, made by its request (or, replayed, by the
    first attempt of its key); each 412 and 409 lost to another request."""
    problems = []
    firsthand: dict[tuple[str, int], Call] = {}
    for call in calls:
        request, body = call.request, call.body
        order = logs.get(request.order_id)
        if call.ok:
            version = int(body["version"])
            where = (body.get("partition"), body.get("offset"))
            record = order.applied.get(version) if order is not None else None
            if body.get("id") != request.order_id or call.etag != f'"{version}"':
                problems.append(f"2xx names another order or ETag: {call.describe()}")
            if record is None or where != (record.partition, record.offset):
                problems.append(f"2xx not where the log applied it ({record}): {call.describe()}")
            elif not made_by(record.event, request):
                problems.append(f"2xx for another request's event {record}: {call.describe()}")
            if call.replayed:
                continue
            if (earlier := firsthand.get((request.order_id, version))) is not None:
                problems.append(
                    f"two first-hand 2xx of one version:\n  {earlier.describe()}\n"
                    f"  {call.describe()}"
                )
            firsthand[(request.order_id, version)] = call
        elif call.status == 412 and request.if_match is not None:
            named = request.if_match
            after = order.applied.get(named + 1) if order is not None else None
            current = body.get("current_version")
            if body.get("expected_version") != named or not (
                isinstance(current, int) and current >= named + 1
            ):
                problems.append(f"412 without a later version: {call.describe()}")
            if after is None or made_by(after.event, request):
                problems.append(f"412, but v{named + 1} is {after}: {call.describe()}")
        elif call.status == 409:
            first = order.applied.get(1) if order is not None else None
            if first is None or made_by(first.event, request):
                problems.append(f"409, but v1 is {first}: {call.describe()}")
    return problems


def check_keys(calls: list[Call]) -> list[str]:
    """Each key's 2xx answers are its first: the same status and version, and replayed
    after the first (a key is never answered first-hand twice)."""
    problems = []
    by_request: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        if call.request.key is not None:
            by_request[call.request.ident].append(call)
        elif call.replayed:
            problems.append(f"replayed without a key: {call.describe()}")
    for attempts in by_request.values():
        answered = sorted((c for c in attempts if c.ok), key=lambda c: c.attempt)
        if not answered:
            continue
        first = answered[0]
        for later in answered[1:]:
            if (later.status, later.body["version"]) != (first.status, first.body["version"]):
                problems.append(
                    f"replay differs from the first:\n  {first.describe()}\n  {later.describe()}"
                )
            if not later.replayed:
                problems.append(f"a key's retry not replayed: {later.describe()}")
    return problems


def states_differ(
    service: Service, logs: dict[str, OrderLog], ids: Iterable[str], timeout: float = SETTLE_S
) -> dict[str, Any]:
    """Ask ``service`` for each order until it answers the log's fold (bounded); the
    orders whose last answer still differs (log's state, answer)."""
    deadline = time.monotonic() + timeout
    differ: dict[str, Any] = {}
    with httpx.Client(base_url=service.url, timeout=CLIENT_TIMEOUT_S) as http:
        for order_id in ids:
            expected = expected_state(logs[order_id])
            while True:
                response = http.get(f"/orders/{order_id}")
                got = json_or_text(response)
                if response.status_code == 200 and normalize_state(got) == expected:
                    break
                if time.monotonic() > deadline or (
                    response.status_code == 200 and got["version"] > expected["version"]
                ):
                    differ[order_id] = (expected, response.status_code, got)
                    break
                time.sleep(0.1)
    return differ


def summary(traffic: Traffic, logs: dict[str, OrderLog]) -> str:
    calls = traffic.calls
    answers = Counter(
        f"{c.request.kind} {c.status or 'unreachable'} {slug_of(c.body) or ''}".strip()
        for c in calls
    )
    lines = [
        f"{len(calls)} calls ({len({c.request.ident for c in calls})} requests) in "
        f"{TRAFFIC_S:.0f} s by {CLIENTS} clients; kills: {traffic.fleet.kills}",
        *(f"  {n:6d}  {what}" for what, n in sorted(answers.items())),
        f"  forwarded 2xx: {sum(c.ok and c.served_by != c.asked for c in calls)}, "
        f"replayed: {sum(c.replayed for c in calls)}, "
        f"2xx asked of slot: {dict(Counter(c.slot for c in calls if c.ok))}",
        f"  log: {len(logs)} orders, {sum(len(o.applied) for o in logs.values())} applied "
        f"events, {sum(o.duplicates for o in logs.values())} dropped as duplicates",
    ]
    return "\n".join(lines)


@pytest.mark.timeout(480)
def test_sixty_seconds_of_writes_while_instances_are_killed_and_restarted(
    start_command: StartCommand,
    start_query: Callable[..., Service],
    tmp_path: Path,
    kafka_config: dict[str, Any],
    topics: dict[str, str],
) -> None:
    fleet = Fleet(lambda slot: start_instance(start_command, tmp_path, slot))
    query = start_query(ES_ORDERS_STATE_DIR=str(tmp_path / "q0"))
    wait_holding(fleet.current)
    hot = ids_per_partition("hot", HOT_PER_PARTITION)
    create_orders(fleet.current, hot)
    setup = [
        Request(f"setup-{i}", "create", i, "/orders", {}, "price", 1299, None, f"setup-{i}")
        for i in hot
    ]

    traffic = Traffic(fleet, hot)
    clients = [threading.Thread(target=traffic.client, args=(n,)) for n in range(CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        traffic.chaos(TRAFFIC_S)
    finally:
        traffic.stop.set()
        for thread in clients:
            thread.join(3 * CLIENT_TIMEOUT_S)
    assert not any(t.is_alive() for t in clients), "a client hangs"
    assert not traffic.failures, traffic.failures
    (tmp_path / "calls.json").write_text(
        json.dumps([asdict(c) for c in traffic.calls], indent=1, default=str)
    )
    for service in fleet.current:
        service.wait_ready(READY_S)
    time.sleep(3)  # the last acknowledgements of events a killed instance left in doubt

    logs = read_log(kafka_config, topics["events"])
    report = summary(traffic, logs)
    print(report)
    calls = traffic.calls
    requests = setup + list({c.request.ident: c.request for c in calls}.values())
    problems = [
        *check_statuses(calls, fleet.killed),
        *check_log(logs, requests),
        *check_answers(calls, logs),
        *check_keys(calls),
    ]
    assert not problems, (
        f"{len(problems)} problems:\n" + "\n".join(problems[:30]) + f"\n{report}\n"
        f"{logs_of(fleet.every, 1500)}"
    )

    differ = states_differ(query, logs, sorted(logs))
    assert not differ, (f"the query instance differs from the log: {differ}", report)
    for service in fleet.current:
        differ = states_differ(service, logs, hot)
        assert not differ, (f"{service.url} differs from the log: {differ}", report)

    decided = {fleet.slot_of[c.served_by] for c in calls if c.ok and c.served_by in fleet.slot_of}
    assert {c.slot for c in calls if c.ok} == set(range(INSTANCES)), report
    assert decided == set(range(INSTANCES)), report
    assert any(c.ok and c.served_by != c.asked for c in calls), f"nothing forwarded\n{report}"
    assert fleet.kills, f"no instance was killed\n{report}"
    assert any(c.request.kind == "conditional" and c.status == 200 for c in calls), report
    for service in fleet.current:
        assert service.stop() == 0, service.log_tail()
    assert query.stop() == 0, query.log_tail()


# -- a writer outside the command service ---------------------------------------------------


def test_commands_racing_another_writer_are_answered_only_for_events_the_log_kept(
    start_command: StartCommand,
    tmp_path: Path,
    kafka_config: dict[str, Any],
    topics: dict[str, str],
) -> None:
    """A second writer appends version after version of one order straight to the events
    topic (a stale instance would, or a tool that bypasses the API) while clients send
    that order unconditional and conditional changes. Events of the command service lose
    races in the log then, and the test proves it: some are dropped as duplicates. None of
    those is answered 2xx; every 2xx names an event the log kept, made by its request; an
    unconditional change that lost was decided again and applied."""
    service = start_instance(start_command, tmp_path, 0)
    wait_holding([service])
    create_orders([service], ["contested"])
    producer = Producer({**kafka_config, "partitioner": "murmur2_random", "linger.ms": 0})
    stop = threading.Event()

    def rogue() -> None:
        version = 2
        while not stop.is_set() and version < 2000:
            event = PriceChanged(
                f"rogue-{version}", "contested", version, datetime.now(UTC), 900_000 + version
            )
            producer.produce(topics["events"], encode_event(event), b"contested")
            producer.poll(0)
            version += 1
            time.sleep(0.004)
        producer.flush(10)

    writer = threading.Thread(target=rogue)
    answers: list[tuple[int, int | None, httpx.Response]] = []  # quantity, If-Match, answer
    writer.start()
    try:
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as http:
            seen = 1
            for quantity in range(10, 130):  # never the 2 it was created with: no no-op
                conditional = quantity % 3 == 0
                headers = {"If-Match": f'"{seen}"'} if conditional else {}
                response = http.post(
                    f"{service.url}/orders/contested/quantity",
                    json={"quantity": quantity},
                    headers=headers,
                )
                answers.append((quantity, seen if conditional else None, response))
                if response.status_code == 200:
                    seen = response.json()["version"]
                elif response.status_code == 412:
                    seen = response.json()["current_version"]
    finally:
        stop.set()
        writer.join(30)
    logs = read_log(kafka_config, topics["events"])
    order = logs["contested"]
    mine_applied = {
        a.event.quantity: a for a in order.applied.values() if isinstance(a.event, QuantityChanged)
    }
    statuses = Counter(r.status_code for _, _, r in answers)
    assert set(statuses) <= {200, 412, 503}, statuses
    for quantity, expected, response in answers:
        if response.status_code == 200:
            body = response.json()
            kept = mine_applied.get(quantity)
            assert kept is not None, (quantity, body)
            assert (body["version"], body["partition"], body["offset"]) == (
                kept.event.version,
                kept.partition,
                kept.offset,
            ), (quantity, body, kept)
        elif response.status_code == 412:
            assert expected is not None, response.text  # only conditional changes conflict
            assert response.json()["current_version"] > expected, response.text
            assert quantity not in mine_applied, quantity
        else:
            # Lost the race for the next version five times in a row to the other writer.
            assert slug_of(response.json()) == "order-contended", response.text
            assert response.headers["retry-after"], response.text
    # Events of the command service that lost in the log: a version another event of the
    # order had taken first. The 2xx checks above saw none of them answered as applied.
    records = read_all(kafka_config, topics["events"], PARTITIONS)
    mine = [
        event
        for event in (decode_record(m.key(), m.value(), 0) for m in records)
        if isinstance(event, QuantityChanged)
    ]
    lost = [e for e in mine if order.applied[e.version].event.event_id != e.event_id]
    assert lost, "no event of the command service lost a race: the test proved nothing"
    assert statuses[200] >= 10, statuses
    print(
        f"contested order: {statuses}, {len(lost)} events of the command service lost in "
        f"the log, {order.duplicates} duplicates, final version {order.state.version}"
    )
    assert service.stop() == 0
