"""``GET /changes`` as a client sees it: live, resumable, filtered, heartbeats, and a
client too slow to keep up disconnected while the service and its other clients go on."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from es_orders.workload import encoded, order_events
from tests.integration.runtime_support import produce
from tests.integration.service_support import Service
from tests.vectors import VectorRecord

pytestmark = pytest.mark.integration

ORDER = {"user_id": "u1", "product_id": "57", "quantity": 2, "price": 1299}
PARTITIONS = 3  # the test topics' (conftest.topics)


@dataclass(frozen=True)
class Sse:
    """One block of the stream: an event, the opening id, or a comment (``event`` "comment")."""

    event: str | None
    id: str | None
    data: str

    def change(self) -> dict[str, Any]:
        assert self.event == "change", self
        parsed: dict[str, Any] = json.loads(self.data)
        return parsed


class Changes:
    """A client of GET /changes, reading it block by block."""

    def __init__(
        self,
        url: str,
        *,
        last_event_id: str | None = None,
        order_id: str | None = None,
        read_timeout: float = 10.0,
    ) -> None:
        headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
        params = {} if order_id is None else {"order_id": order_id}
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=read_timeout))
        self._stream = self._client.stream("GET", f"{url}/changes", headers=headers, params=params)
        self.response = self._stream.__enter__()
        assert self.response.status_code == 200, self.response.read()
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self._lines = self.response.iter_lines()
        opening = self.next()
        assert opening.event is None and opening.data == "", opening
        assert opening.id is not None
        self.start_id = opening.id

    def next(self) -> Sse:
        fields: dict[str, str] = {}
        data: list[str] = []
        for line in self._lines:
            if line == "":
                if fields or data:
                    return Sse(fields.get("event"), fields.get("id"), "\n".join(data))
                continue
            if line.startswith(":"):
                return Sse("comment", None, line[1:].strip())
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
        raise EOFError("the stream ended")

    def next_event(self) -> Sse:
        """The next block that is not a comment."""
        while (block := self.next()).event == "comment":
            pass
        return block

    def close(self) -> None:
        self._stream.__exit__(None, None, None)
        self._client.close()


def offsets(event_id: str) -> list[int]:
    parts = [int(part) for part in event_id.split(",")]
    assert len(parts) == PARTITIONS, event_id
    return parts


def start_pair(
    start_query: Callable[..., Service], start_command: Callable[..., Service], **env: str
) -> tuple[Service, Service]:
    query = start_query(**env)
    command = start_command("--no-simulate")
    query.wait_ready()
    command.wait_ready()
    return query, command


def post(command: Service, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{command.url}{path}", json=body, timeout=30)
    assert response.status_code in (200, 201), response.text
    answer: dict[str, Any] = response.json()
    return answer


def create(command: Service, order_id: str) -> dict[str, Any]:
    return post(command, "/orders", {"id": order_id, **ORDER})


def test_a_change_arrives_within_a_second_and_a_resume_neither_loses_nor_repeats(
    start_query: Callable[..., Service], start_command: Callable[..., Service]
) -> None:
    query, command = start_pair(start_query, start_command, ES_ORDERS_CHANGES_HEARTBEAT_S="0.5")
    create(command, "before")  # made before the stream opened: not in it
    time.sleep(1)
    stream = Changes(query.url)

    sent = time.monotonic()
    written = create(command, "a1")
    first = stream.next_event()
    assert time.monotonic() - sent < 1.0
    change = first.change()
    assert (change["order_id"], change["version"]) == ("a1", 1)
    assert change["partition"] == written["partition"]  # the changelog's is the event's
    assert change["state"] == query.get("/orders/a1").json()
    # The id is the position after this record: its partition's offset + 1, the others'
    # where the stream started.
    assert first.id is not None
    position = offsets(first.id)
    assert position[change["partition"]] == change["offset"] + 1
    start = offsets(stream.start_id)
    assert all(position[n] == start[n] for n in range(PARTITIONS) if n != change["partition"])

    post(command, "/orders/a1/price", {"price": 1199})
    second = stream.next_event()
    assert second.change()["version"] == 2
    assert second.change()["state"]["price"] == 1199
    resume_from = second.id
    assert resume_from is not None
    stream.close()

    missed = {("a2", 1), ("a3", 1), ("a1", 3), ("a2", 2)}
    create(command, "a2")
    create(command, "a3")
    post(command, "/orders/a1/price", {"price": 999})
    post(command, "/orders/a2/quantity", {"quantity": 7})
    resumed = Changes(query.url, last_event_id=resume_from)
    assert resumed.start_id == resume_from
    seen: list[tuple[str, int]] = []
    while len(seen) < len(missed):
        event = resumed.next_event().change()
        seen.append((event["order_id"], event["version"]))
    assert sorted(seen) == sorted(missed)
    # Then nothing but heartbeats: no repeat of what came before or after the resume.
    for _ in range(3):
        assert resumed.next().event == "comment"

    # Shutting down ends the stream at once, and the service exits cleanly.
    stopped = time.monotonic()
    assert query.stop() == 0
    with pytest.raises((EOFError, httpx.RemoteProtocolError)):
        while True:
            resumed.next()
    # Well inside uvicorn's 5 s grace for open responses: the streams were ended, not waited out.
    assert time.monotonic() - stopped < 3
    resumed.close()


def test_order_id_filters_and_a_malformed_last_event_id_is_refused(
    start_query: Callable[..., Service], start_command: Callable[..., Service]
) -> None:
    query, command = start_pair(start_query, start_command, ES_ORDERS_CHANGES_HEARTBEAT_S="0.5")
    only_b2 = Changes(query.url, order_id="b2")
    everything = Changes(query.url)
    create(command, "b1")
    create(command, "b2")
    post(command, "/orders/b1/price", {"price": 1})
    post(command, "/orders/b2/price", {"price": 2})
    post(command, "/orders/b1/price", {"price": 3})

    got = [only_b2.next_event() for _ in range(2)]
    assert [(e.change()["order_id"], e.change()["version"]) for e in got] == [("b2", 1), ("b2", 2)]
    all_changes = [everything.next_event() for _ in range(5)]
    assert {(e.change()["order_id"], e.change()["version"]) for e in all_changes} == {
        ("b1", 1),
        ("b2", 1),
        ("b1", 2),
        ("b2", 2),
        ("b1", 3),
    }
    only_b2.close()
    everything.close()
    # Resumed after b2's first change: its second, and none of b1's that came between.
    assert got[0].id is not None
    resumed = Changes(query.url, order_id="b2", last_event_id=got[0].id)
    again = resumed.next_event()
    assert again.data == got[1].data
    # The id moved past b1's records too (how far in the other partitions depends on how
    # the fetches came), never short of b2's own.
    assert again.id is not None and got[1].id is not None
    partition = got[1].change()["partition"]
    assert offsets(again.id)[partition] == offsets(got[1].id)[partition]
    for _ in range(3):
        assert resumed.next().event == "comment"
    resumed.close()

    for bad in ("1,2", "1,2,3,4", "-1,0,0", "a,b,c", "1,,2"):
        response = httpx.get(f"{query.url}/changes", headers={"Last-Event-ID": bad}, timeout=10)
        assert response.status_code == 422, (bad, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("/validation-error")
    response = httpx.get(f"{query.url}/changes", params={"order_id": ""}, timeout=10)
    assert response.status_code == 422


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def slow_client(url: str) -> tuple[socket.socket, bytes]:
    """A GET /changes on a socket with a small receive buffer, and what it read of the
    response (at least the headers and the opening block). The caller then stops reading."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET /changes HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    sock.settimeout(10)
    received = b""
    while b"\nid: " not in received:
        received += sock.recv(4096)
    return sock, received


def read_to_end(sock: socket.socket, received: bytes, timeout: float = 20) -> bytes:
    """The body of the chunked response whose first bytes were ``received``, read to its
    end (the connection closing ends it too)."""
    sock.settimeout(timeout)
    raw = bytearray(received)
    while not raw.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    head, _, rest = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    body = bytearray()
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        body += rest[:size]
        rest = rest[size + 2 :]
        if size == 0:
            break
    return bytes(body)


def test_a_client_that_stops_reading_is_cut_off_and_the_rest_go_on(
    start_query: Callable[..., Service],
    kafka_config: dict[str, Any],
    topics: dict[str, str],
) -> None:
    query = start_query(
        ES_ORDERS_CHANGES_QUEUE_SIZE="10",
        ES_ORDERS_CHANGES_HEARTBEAT_S="0.3",
        ES_ORDERS_CHANGES_MAX_STREAMS="2",
    )
    query.wait_ready()
    warm_up = Changes(query.url)  # the first stream starts threads that stay
    began = time.monotonic()
    heartbeats = [warm_up.next() for _ in range(3)]
    assert 0.6 < time.monotonic() - began < 3
    assert [h.event for h in heartbeats] == ["comment"] * 3
    assert {h.data for h in heartbeats} == {"heartbeat"}
    warm_up.close()
    time.sleep(1.5)
    idle_threads = threads_of(query.pid)

    fast = Changes(query.url)
    fast_seen: list[tuple[str, int]] = []
    produced = 0
    done_producing = threading.Event()

    def read_fast() -> None:
        # Heartbeats come every 0.3 s while there is nothing: the loop looks up often.
        while not (done_producing.is_set() and len(fast_seen) >= produced):
            block = fast.next()
            if block.event == "change":
                fast_seen.append((block.change()["order_id"], block.change()["version"]))

    sock, received = slow_client(query.url)
    refused = httpx.get(f"{query.url}/changes", timeout=10)
    assert refused.status_code == 503
    assert refused.json()["type"].endswith("/changes-unavailable")
    assert "Retry-After" in refused.headers

    reader = threading.Thread(target=read_fast)
    reader.start()
    # New orders, a changelog record each, until the slow client's socket buffers are full
    # (how much they hold depends on the kernel) and its queue has stayed full.
    overflowed = "changes: a client took none"
    for _ in range(10):
        produced += 5000
        created = list(order_events(produced, produced))[produced - 5000 :]
        records = [VectorRecord(k, v, {}, 0) for k, v in encoded(iter(created))]
        produce(kafka_config, topics["events"], records)
        deadline = time.monotonic() + 5
        while overflowed not in query.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        if overflowed in query.log_text():
            break
    done_producing.set()
    query.wait_for_log(overflowed, timeout=1)
    body = read_to_end(sock, received)
    sock.close()
    reader.join(60)

    # The slow client: some changes, then the overflow event saying where to resume.
    text = body.decode()
    assert "event: overflow" in text
    ids = [line.removeprefix("id: ") for line in text.splitlines() if line.startswith("id: ")]
    overflow = json.loads(text.split("event: overflow\n")[1].splitlines()[0].removeprefix("data: "))
    assert overflow["last_event_id"] == ids[-1] == ids[-2]  # the id of the last change it got
    assert "behind" in overflow["reason"]
    got_before = text.count("event: change")
    assert 0 < got_before < produced

    # Resuming from there gives exactly the rest.
    rest = Changes(query.url, last_event_id=overflow["last_event_id"])
    for _ in range(produced - got_before):
        rest.next_event()
    assert rest.next().event == "comment"
    rest.close()

    # The reading client was never cut off, although the burst was far larger than its queue.
    assert not reader.is_alive()
    assert len(fast_seen) == produced and len(set(fast_seen)) == produced
    fast.close()
    assert query.get("/health/ready").status_code == 200
    # Every stream's consumer and thread is gone again.
    deadline = time.monotonic() + 10
    while threads_of(query.pid) > idle_threads:
        assert time.monotonic() < deadline, (threads_of(query.pid), idle_threads)
        time.sleep(0.1)
