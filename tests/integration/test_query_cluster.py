"""Several ``es-orders query`` instances of one application, answering as one.

Three instances (one fold worker and a state directory each) share the consumer group,
so each holds one of the three partitions; they learn of each other through the members
topic. The command service writes, over HTTP, as clients do. Against the session broker:

- every instance answers for every order as the fold of the log says, naming in
  ``Served-By`` the owner that ``/cluster`` names (itself for its own partition); an
  unknown id is a 404 from each, and each names the same owners;
- an instance is SIGKILLed under reads: the survivors answer 200 or 503 (with
  ``Retry-After``) meanwhile, never a 404 of an existing order nor a 500, and every
  order again once the group and the members topic have noticed;
- ``GET /orders`` pages over the whole cluster, each order once, in id order, from any
  instance; ``scope=local`` splits it into the instances' disjoint parts;
- ``min_version`` reads a command's own write through an instance that does not hold it;
- a rolling restart under reads: 200 or 503 only, and every order from every instance
  afterwards.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from es_orders.codec import LegacyUpdate, decode_record, state_to_dict
from es_orders.domain import Event, fold
from es_orders.kafka.partitioner import partition_for
from tests.integration.runtime_support import read_all
from tests.integration.service_support import Service
from tests.vectors import normalize_state

pytestmark = pytest.mark.integration

PARTITIONS = 3
INSTANCES = 3
PROBLEMS = "https://es-orders.dev/problems/"
ORDER = {"user_id": "u1", "product_id": "57", "quantity": 2, "price": 1299}
# Three query instances, a command service and the broker start on two shared cores.
FORM_S = 90.0
# After a SIGKILL: the session timeout (3 s, conftest), a rebalance, a restore from the
# changelog, the new claim in the members topic.
RECOVER_S = 30.0

StartQuery = Callable[..., Service]


def partition_of(order_id: str) -> int:
    return partition_for(order_id.encode(), PARTITIONS)


def slug(response: httpx.Response) -> str:
    body = response.json()
    assert isinstance(body, dict), body
    kind = str(body["type"])
    assert kind.startswith(PROBLEMS), kind
    return kind.removeprefix(PROBLEMS)


# -- the log and its fold ---------------------------------------------------------------


@dataclass
class Log:
    states: dict[str, dict[str, Any]]  # order id -> the fold of its events, normalized
    versions: dict[str, int]
    ends: dict[int, int]  # partition -> the offset after its last record


def read_log(kafka_config: dict[str, Any], topic: str) -> Log:
    """Every record of the events topic, decoded and folded by the project's own fold."""
    by_order: dict[str, list[Event]] = defaultdict(list)
    ends = dict.fromkeys(range(PARTITIONS), 0)
    for message in read_all(kafka_config, topic, PARTITIONS):
        decoded = decode_record(message.key(), message.value(), message.timestamp()[1])
        assert not isinstance(decoded, LegacyUpdate), decoded
        # The command service places keys as the Java client does: routing relies on it.
        assert message.partition() == partition_of(decoded.order_id), decoded
        by_order[decoded.order_id].append(decoded)
        ends[message.partition()] = max(ends[message.partition()], message.offset() + 1)
    states, versions = {}, {}
    for order_id, events in by_order.items():
        folded = fold(events)
        assert (folded.duplicates, folded.gaps) == (0, 0), (order_id, folded)
        assert folded.state is not None
        states[order_id] = normalize_state(state_to_dict(folded.state))
        versions[order_id] = folded.state.version
    return Log(states, versions, ends)


# -- the services -------------------------------------------------------------------------


def start_instance(start_query: StartQuery, tmp_path: Path, slot: int) -> Service:
    """Query instance ``slot``: a state directory of its own, kept across its restarts."""
    return start_query(ES_ORDERS_STATE_DIR=str(tmp_path / f"q{slot}"))


def start_instances(start_query: StartQuery, tmp_path: Path) -> list[Service]:
    return [start_instance(start_query, tmp_path, slot) for slot in range(INSTANCES)]


def create_orders(command: Service, ids: list[str]) -> None:
    """Create each order through the command service's API (a few clients at once)."""

    def create(order_id: str) -> None:
        body = {"id": order_id, **ORDER}
        response = httpx.post(f"{command.url}/orders", json=body, timeout=30)
        assert response.status_code == 201, (order_id, response.status_code, response.text)
        assert response.json()["version"] == 1

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(create, ids))
    assert {partition_of(i) for i in ids} == set(range(PARTITIONS)), "a partition has no order"


def mixed_ids(count: int) -> list[str]:
    """Ids in the shapes the command service takes, sorting in interesting ways."""
    shapes = ("{n}", "ord-{n:04d}", "Z:{h}", "a.{n}@x", "{h}_{n}")
    return [shapes[n % len(shapes)].format(n=n, h=uuid.uuid4().hex[:6]) for n in range(count)]


def stop_all(services: list[Service]) -> None:
    codes = {s.url: s.stop() for s in services}
    assert set(codes.values()) == {0}, codes


def cluster_of(service: Service) -> dict[str, Any]:
    response = service.get("/cluster")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def owners_of(cluster: dict[str, Any]) -> dict[int, str | None]:
    return {int(number): url for number, url in cluster["owners"].items()}


def logs_of(services: list[Service], chars: int = 2500) -> str:
    return "\n".join(f"--- {s.url} (pid {s.pid}):\n{s.log_tail(chars)}" for s in services)


def wait_formed(services: list[Service], timeout: float = FORM_S) -> dict[int, str]:
    """Wait until every instance is ready and its /cluster shows exactly these instances,
    each ready and owning a partition, every partition owned by one of them, and the same
    owners on all; those owners."""
    urls = {s.url for s in services}
    deadline = time.monotonic() + timeout
    while True:
        problems: list[str] = []
        seen: list[dict[int, str | None]] = []
        for service in services:
            if service.process.poll() is not None:
                raise AssertionError(
                    f"{service.url} exited with {service.process.returncode}\n{logs_of(services)}"
                )
            try:
                ready = service.get("/health/ready").status_code
                cluster = cluster_of(service)
            except httpx.HTTPError as exc:
                problems.append(f"{service.url}: {exc!r}")
                continue
            members = {m["url"]: m for m in cluster["members"]}
            owners = owners_of(cluster)
            seen.append(owners)
            if ready != 200:
                problems.append(f"{service.url}: ready {ready}")
            if set(members) != urls:
                problems.append(f"{service.url}: members {sorted(members)}")
            elif not all(m["ready"] for m in members.values()):
                problems.append(f"{service.url}: not all ready {cluster['members']}")
            if sorted(owners) != list(range(PARTITIONS)) or set(owners.values()) != urls:
                problems.append(f"{service.url}: owners {owners}")
            for number, url in owners.items():
                held = [p["partition"] for p in members.get(url, {}).get("partitions", [])]
                if number not in held:
                    problems.append(f"{service.url}: owner {url} of {number} holds {held}")
        if not problems and all(owners == seen[0] for owners in seen):
            return {number: str(url) for number, url in seen[0].items()}
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not formed in {timeout} s: {problems} {seen}\n{logs_of(services)}"
            )
        time.sleep(0.2)


def formed_over_orders(
    start_command: Callable[..., Service],
    start_query: StartQuery,
    tmp_path: Path,
    kafka_config: dict[str, Any],
    events_topic: str,
    ids: list[str],
) -> tuple[list[Service], Log, dict[int, str]]:
    """Three instances over ``ids``, created through a command service that is stopped
    again: the instances, the log, and the owners once every instance has caught up."""
    command = start_command("--no-simulate")
    queries = start_instances(start_query, tmp_path)
    command.wait_ready()
    create_orders(command, ids)
    assert command.stop() == 0, command.log_tail()
    log = read_log(kafka_config, events_topic)
    owners = wait_formed(queries)
    wait_caught_up(queries, log.ends)
    return queries, log, owners


def wait_caught_up(services: list[Service], ends: dict[int, int], timeout: float = 30) -> None:
    """Wait until each instance says (in /cluster) it has folded each of its partitions to
    the end of the log, and the others have heard so too."""
    deadline = time.monotonic() + timeout
    while True:
        behind = []
        for service in services:
            for member in cluster_of(service)["members"]:
                for part in member["partitions"]:
                    end = ends[part["partition"]]
                    now = (part["phase"], part["consumed"], part["end"], part["lag"])
                    if now != ("caught-up", end, end, 0):
                        behind.append((service.url, member["url"], part))
        if not behind:
            return
        assert time.monotonic() < deadline, f"not caught up to {ends}: {behind}"
        time.sleep(0.1)


def assert_every_order_answered(
    services: list[Service], log: Log, owners: dict[int, str]
) -> Counter[str]:
    """Every order from every instance: 200, the log's fold, ``Served-By`` its owner; how
    many answers each instance gave itself."""
    own: Counter[str] = Counter()
    for service in services:
        with httpx.Client(base_url=service.url, timeout=10) as client:
            for order_id, expected in sorted(log.states.items()):
                response = client.get(f"/orders/{order_id}")
                where = (service.url, order_id)
                assert response.status_code == 200, (where, response.status_code, response.text)
                owner = owners[partition_of(order_id)]
                assert response.headers["served-by"] == owner, (where, owner, response.headers)
                assert response.headers["etag"] == f'"{log.versions[order_id]}"', where
                assert normalize_state(response.json()) == expected, where
                own[service.url] += owner == service.url
    return own


# -- load ---------------------------------------------------------------------------------


class ChangeLoad:
    """A client changing the price of random orders through the command service."""

    def __init__(self, command: Service, ids: list[str], rate: float) -> None:
        self._command, self._ids, self._pause = command, ids, 1 / rate
        self._stop = threading.Event()
        # Statuses, or the exception a request raised.
        self.answers: Counter[int | str] = Counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        with httpx.Client(base_url=self._command.url, timeout=30) as client:
            while not self._stop.is_set():
                order_id = self._ids[(n * 7919) % len(self._ids)]
                n += 1
                try:
                    response = client.post(f"/orders/{order_id}/price", json={"price": 100 + n})
                except httpx.HTTPError as exc:
                    self.answers[repr(exc)] += 1
                else:
                    self.answers[response.status_code] += 1
                time.sleep(self._pause)

    def stop(self) -> Counter[int | str]:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()
        return self.answers


@dataclass
class Readers:
    """One thread per slot reading every order, round and round, from the instance in
    that slot (a slot's instance is replaced in a rolling restart); every answer counted:
    200, (503, problem type, whether it had Retry-After), or any other status."""

    slots: list[Service]
    ids: list[str]
    statuses: Counter[Any] = field(default_factory=Counter)
    # Requests that got no answer (the instance was down), by exception type.
    failures: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    # When (time.monotonic()), where, which order and what each answer other than 200 was.
    misses: list[tuple[float, str, str, Any]] = field(default_factory=list)
    # (instance URL, order id) -> when its latest answer came, and what it was.
    latest: dict[tuple[str, str], tuple[float, Any]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        for slot in range(len(self.slots)):
            thread = threading.Thread(target=self._read, args=(slot,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _read(self, slot: int) -> None:
        clients: dict[str, httpx.Client] = {}
        n = slot * 17
        try:
            while not self._stop.is_set():
                url = self.slots[slot].url
                client = clients.get(url)
                if client is None:
                    client = clients[url] = httpx.Client(base_url=url, timeout=10)
                order_id = self.ids[n % len(self.ids)]
                n += 1
                try:
                    response = client.get(f"/orders/{order_id}")
                except httpx.TransportError as exc:
                    with self._lock:
                        self.failures[type(exc).__name__] += 1
                    time.sleep(0.02)
                    continue
                self._count(url, order_id, response)
                time.sleep(0.002)
        except Exception as exc:  # a reader that stops must fail the test, not go quiet
            with self._lock:
                self.statuses[f"reader failed: {exc!r}"] += 1
            raise
        finally:
            for client in clients.values():
                client.close()

    def _count(self, url: str, order_id: str, response: httpx.Response) -> None:
        status = response.status_code
        key: Any = status
        if status == 503:
            try:
                kind = str(response.json()["type"]).removeprefix(PROBLEMS)
            except (ValueError, KeyError, TypeError):
                kind = f"not a problem: {response.headers.get('content-type')}"
            key = (503, kind, "retry-after" in response.headers)
        with self._lock:
            self.latest[url, order_id] = (time.monotonic(), key)
            self.statuses[key] += 1
            if key != 200 and len(self.misses) < 100_000:
                self.misses.append((time.monotonic(), url, order_id, key))
            if key not in (200, (503, "partition-unavailable", True)) and len(self.unexpected) < 10:
                self.unexpected.append(f"{url} {order_id}: {status} {response.text[:300]}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
            assert not thread.is_alive()

    def not_served_since(self, urls: list[str], start: float) -> dict[tuple[str, str], Any]:
        """The (instance, order) pairs whose latest answer did not come after ``start``
        or was not a 200, with that answer (None: none after ``start``)."""
        with self._lock:
            latest = dict(self.latest)
        pending = {}
        for url in urls:
            for order_id in self.ids:
                at, key = latest.get((url, order_id), (start, None))
                if at <= start or key != 200:
                    pending[url, order_id] = key if at > start else None
        return pending

    def misses_since(self, start: float) -> str:
        """Per instance and answer: how many, the first and last seconds after ``start``,
        and a few of the orders."""
        spans: dict[tuple[str, Any], list[float]] = defaultdict(list)
        orders: dict[tuple[str, Any], set[str]] = defaultdict(set)
        with self._lock:
            for at, url, order_id, key in self.misses:
                spans[url, key].append(at - start)
                orders[url, key].add(order_id)
        return "; ".join(
            f"{url} {key}: {len(s)} from {min(s):.1f} s to {max(s):.1f} s, "
            f"{len(orders[url, key])} orders e.g. {sorted(orders[url, key])[:5]}"
            for (url, key), s in sorted(spans.items(), key=str)
        )

    def assert_only_served_or_unavailable(self) -> None:
        allowed = {200, (503, "partition-unavailable", True)}
        assert set(self.statuses) <= allowed, (
            f"answers {dict(self.statuses)}; unexpected: {self.unexpected}"
        )
        assert self.statuses[200] > 0, dict(self.statuses)


# -- the tests ----------------------------------------------------------------------------


def test_every_instance_answers_every_order_as_the_log_folds_it(
    kafka_config: dict[str, Any],
    topics: dict[str, str],
    start_query: StartQuery,
    start_command: Callable[..., Service],
    tmp_path: Path,
) -> None:
    command = start_command("--rate", "30")  # the simulator drives orders 1, 2 and 3
    queries = start_instances(start_query, tmp_path)
    command.wait_ready()
    ids = [f"c-{n:03d}" for n in range(60)]
    create_orders(command, ids)
    load = ChangeLoad(command, ids, rate=20)
    # Every instance ready (so caught up) while the writes go on.
    owners = wait_formed(queries)
    time.sleep(2.0)
    answers = load.stop()
    assert set(answers) == {200} and answers[200] > 10, answers
    assert command.stop() == 0, command.log_tail()

    log = read_log(kafka_config, topics["events"])
    assert set(log.states) == {"1", "2", "3", *ids}
    simulated = sum(log.versions[i] for i in ("1", "2", "3"))
    assert simulated > 30, f"the simulator sent few commands: {log.versions}"
    wait_caught_up(queries, log.ends)

    own = assert_every_order_answered(queries, log, owners)
    # Each instance answered the orders of its own partition itself.
    assert set(own) == {q.url for q in queries} and min(own.values()) > 0, own

    # A conditional read passes through a forward: 304 while the version is the same.
    for query in queries:
        for order_id in ("1", "2", "3", *ids[:6]):
            etag = f'"{log.versions[order_id]}"'
            response = httpx.get(
                f"{query.url}/orders/{order_id}", headers={"If-None-Match": etag}, timeout=10
            )
            assert response.status_code == 304, (query.url, order_id, response.status_code)
            assert response.headers["etag"] == etag
            assert response.headers["served-by"] == owners[partition_of(order_id)]

    # History and time travel are routed the same way: every instance, the owner's answer.
    for query in queries:
        for order_id in ("1", *ids[:6]):
            owner = owners[partition_of(order_id)]
            events = query.get(f"/orders/{order_id}/events", limit=1000)
            assert events.status_code == 200, (query.url, order_id, events.text)
            assert events.headers["served-by"] == owner
            versions = [e["version"] for e in events.json()]
            assert versions == list(range(1, log.versions[order_id] + 1)), (query.url, order_id)
            assert {e["partition"] for e in events.json()} == {partition_of(order_id)}
            first = query.get(f"/orders/{order_id}", version=1)
            assert first.status_code == 200 and first.headers["etag"] == '"1"', first.text
            assert first.headers["served-by"] == owner

    missing = [f"missing-{n}" for n in range(30)]
    assert {partition_of(i) for i in missing} == set(range(PARTITIONS))
    for query in queries:
        for order_id in missing:
            response = query.get(f"/orders/{order_id}")
            assert response.status_code == 404, (query.url, order_id, response.text)
            assert slug(response) == "order-not-found"
            assert response.headers["served-by"] == owners[partition_of(order_id)]
        assert owners_of(cluster_of(query)) == owners, query.url
    stop_all(queries)


def test_a_killed_instance_s_orders_come_back_on_the_survivors(
    kafka_config: dict[str, Any],
    topics: dict[str, str],
    start_query: StartQuery,
    start_command: Callable[..., Service],
    tmp_path: Path,
) -> None:
    ids = [f"k-{n:03d}" for n in range(90)]
    queries, log, owners = formed_over_orders(
        start_command, start_query, tmp_path, kafka_config, topics["events"], ids
    )

    victim, survivors = queries[1], [queries[0], queries[2]]
    orphaned = [n for n, url in owners.items() if url == victim.url]
    readers = Readers(survivors, ids)
    try:
        time.sleep(0.5)
        before = dict(readers.statuses)
        killed_at = time.monotonic()
        victim.kill9()
        # Until the readers have had a 200 for every order from both survivors again.
        urls = [s.url for s in survivors]
        while pending := readers.not_served_since(urls, killed_at):
            elapsed = time.monotonic() - killed_at
            assert elapsed < RECOVER_S, (
                f"{len(pending)} (instance, order) pairs not answered 200 {elapsed:.1f} s after "
                f"the kill (partitions {orphaned} were the victim's); latest answers "
                f"{dict(list(pending.items())[:10])}; in all {dict(readers.statuses)}; "
                f"{readers.misses_since(killed_at)}\n{logs_of(survivors)}"
            )
            time.sleep(0.05)
        recovered_s = time.monotonic() - killed_at
        time.sleep(0.5)
    finally:
        readers.stop()
    counts = (
        f"before the kill {before}; in all {dict(readers.statuses)}; all 200 again "
        f"{recovered_s:.1f} s after the kill; {readers.misses_since(killed_at)}"
    )
    print(counts)
    readers.assert_only_served_or_unavailable()
    assert readers.failures == Counter(), f"{dict(readers.failures)}; {counts}"
    # The reads went on through the move: some found the partition unavailable.
    assert readers.statuses[(503, "partition-unavailable", True)] > 0, counts
    assert before.get(200, 0) > 0, counts

    owners = wait_formed(survivors)
    assert_every_order_answered(survivors, log, owners)
    stop_all(survivors)


def walk(service: Service, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Follow GET /orders's Link headers from the first page: the orders, and the pages."""
    orders: list[dict[str, Any]] = []
    pages = 0
    response = service.get("/orders", **params)
    while True:
        assert response.status_code == 200, (service.url, response.status_code, response.text)
        page = response.json()
        pages += 1
        assert len(page) <= params["limit"], (service.url, len(page))
        orders += page
        link = response.links.get("next")
        if link is None:
            return orders, pages
        assert f"limit={params['limit']}" in link["url"], link
        response = httpx.get(f"{service.url}{link['url']}", timeout=10)


def test_pages_of_the_cluster_list_every_order_once_in_id_order(
    kafka_config: dict[str, Any],
    topics: dict[str, str],
    start_query: StartQuery,
    start_command: Callable[..., Service],
    tmp_path: Path,
) -> None:
    ids = mixed_ids(320)
    queries, log, owners = formed_over_orders(
        start_command, start_query, tmp_path, kafka_config, topics["events"], ids
    )
    assert sorted(log.states) == sorted(ids)

    for query in queries:
        for limit in (7, 50, 1000):
            orders, pages = walk(query, limit=limit)
            walked = [o["id"] for o in orders]
            where = (query.url, limit, pages)
            assert walked == sorted(ids), where  # each once, in id order
            assert pages == -(-len(ids) // limit), where
            assert {o["id"]: normalize_state(o) for o in orders} == log.states, where

    parts = {}
    for query in queries:
        orders, _ = walk(query, limit=7, scope="local")
        local = [o["id"] for o in orders]
        assert local == sorted(local), query.url
        mine = {n for n, url in owners.items() if url == query.url}
        assert {partition_of(i) for i in local} == mine, (query.url, mine)
        parts[query.url] = set(local)
    assert sum(len(p) for p in parts.values()) == len(ids)  # disjoint
    assert set().union(*parts.values()) == set(ids)
    stop_all(queries)


def test_a_read_of_one_s_own_write_through_an_instance_that_does_not_hold_it(
    start_query: StartQuery, start_command: Callable[..., Service], tmp_path: Path
) -> None:
    command = start_command("--no-simulate")
    queries = start_instances(start_query, tmp_path)
    command.wait_ready()
    ids = [f"r-{n:02d}" for n in range(12)]
    create_orders(command, ids)
    owners = wait_formed(queries)
    by_url = {q.url: q for q in queries}

    with httpx.Client(base_url=command.url, timeout=30) as writer:
        for n, order_id in enumerate(ids):
            owner = owners[partition_of(order_id)]
            other = next(q for q in queries if q.url != owner)
            version = 1
            for price in (500 + n, 600 + n):
                changed = writer.post(
                    f"/orders/{order_id}/price",
                    json={"price": price},
                    headers={"If-Match": f'"{version}"'},
                )
                assert changed.status_code == 200, changed.text
                assert changed.headers["etag"] == f'"{version + 1}"'
                version = changed.json()["version"]
                # At once, through an instance that has to forward it.
                read = other.get(f"/orders/{order_id}", min_version=version)
                where = (order_id, other.url, owner)
                assert read.status_code == 200, (where, read.text)
                assert read.headers["served-by"] == owner, (where, read.headers)
                assert read.headers["etag"] == f'"{version}"', where
                assert read.json()["version"] == version and read.json()["price"] == price

            for asked in (other, by_url[owner]):
                started = time.monotonic()
                late = asked.get(f"/orders/{order_id}", min_version=version + 1000, wait=0.5)
                took = time.monotonic() - started
                asked_where = (order_id, asked.url, owner, f"{took:.2f} s")
                assert late.status_code == 503, (asked_where, late.text)
                assert slug(late) == "version-not-visible", asked_where
                body = late.json()
                assert body["current_version"] == version, (asked_where, body)
                assert body["min_version"] == version + 1000, (asked_where, body)
                assert int(late.headers["retry-after"]) >= 1, (asked_where, late.headers)
                assert late.headers["served-by"] == owner, (asked_where, late.headers)
                assert 0.5 <= took < 3.0, asked_where

            too_long = other.get(f"/orders/{order_id}", min_version=version, wait=31)
            assert too_long.status_code == 422, too_long.text
    assert command.stop() == 0, command.log_tail()
    stop_all(queries)


def test_a_rolling_restart_under_reads_answers_200_or_503(
    kafka_config: dict[str, Any],
    topics: dict[str, str],
    start_query: StartQuery,
    start_command: Callable[..., Service],
    tmp_path: Path,
) -> None:
    ids = [f"rr-{n:03d}" for n in range(90)]
    slots, log, _ = formed_over_orders(
        start_command, start_query, tmp_path, kafka_config, topics["events"], ids
    )

    readers = Readers(slots, ids)
    restarts: list[str] = []
    began = time.monotonic()
    try:
        time.sleep(0.5)
        for slot in range(INSTANCES):
            started = time.monotonic()
            old = slots[slot]
            assert old.stop() == 0, old.log_tail()
            # The readers of this slot find nobody listening until the new one is.
            slots[slot] = start_instance(start_query, tmp_path, slot)
            wait_formed(slots)
            restarts.append(f"{old.url} -> {slots[slot].url}: {time.monotonic() - started:.1f} s")
        time.sleep(0.5)
    finally:
        readers.stop()
    counts = (
        f"answers {dict(readers.statuses)}; no answer {dict(readers.failures)}; {restarts}; "
        f"{readers.misses_since(began)}"
    )
    print(counts)
    readers.assert_only_served_or_unavailable()
    # No answer only while an instance was down: refused, or cut off as it stopped.
    assert not any("Timeout" in name for name in readers.failures), counts

    owners = wait_formed(slots)
    wait_caught_up(slots, log.ends)
    assert_every_order_answered(slots, log, owners)
    stop_all(slots)
