"""The command timeout: no command waits longer, for its turn or for the broker."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from es_orders.command import create_command_app
from es_orders.command.errors import CommandTimeoutError, OrderInDoubtError
from es_orders.command.problems import COMMAND_TIMEOUT_TYPE
from es_orders.domain import ChangePrice, CreateOrder, Event
from es_orders.http.problems import ORDER_IN_DOUBT
from tests.unit.command_support import ORDER, LaggingView, RecordingLog, make_handler, problem


class GatedLog(RecordingLog):
    """An event log whose acknowledgements come only when the test gives them."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Future[None]] = []
        self.open = False

    def append(self, event: Event) -> Future[None]:
        future: Future[None] = Future()
        self.events.append(event)
        self.pending.append(future)
        if self.open:
            future.set_result(None)
            self.fold.fold(event)
        return future

    def acknowledge(self) -> None:
        """Acknowledge (and fold) every event so far, and from now on each at once."""
        self.open = True
        for event, future in zip(self.events, self.pending, strict=True):
            if not future.done():
                future.set_result(None)
                self.fold.fold(event)


def appended(log: RecordingLog, count: int) -> None:
    """Wait until ``count`` events were appended (by another thread)."""
    deadline = time.monotonic() + 5
    while len(log.events) < count:
        assert time.monotonic() < deadline, "not appended"
        time.sleep(0.005)


def test_a_command_past_its_timeout_is_refused_without_appending() -> None:
    log = RecordingLog()
    handler = make_handler(LaggingView(), log, command_timeout=1.0)
    with pytest.raises(CommandTimeoutError, match="Nothing was appended"):
        handler.handle(CreateOrder("1", "u1", "57", 2, 12), received_at=time.monotonic() - 1.5)
    assert log.events == []


def test_the_wait_for_an_order_s_turn_counts_against_the_timeout() -> None:
    log = GatedLog()
    handler = make_handler(LaggingView(), log, command_timeout=30.0)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(handler.handle, CreateOrder("1", "u1", "57", 2, 12))
        appended(log, 1)  # the first command holds the order's lock, awaiting its ack
        started = time.monotonic()
        with pytest.raises(CommandTimeoutError):
            # Arrived 29.9 s ago: 0.1 s left for its turn.
            handler.handle(ChangePrice("1", 13), received_at=started - 29.9)
        assert time.monotonic() - started < 5
        assert len(log.events) == 1
        log.acknowledge()
        assert first.result(5).version == 1
    assert handler.handle(ChangePrice("1", 13)).version == 2


def test_the_wait_for_the_acknowledgement_ends_at_the_command_timeout() -> None:
    log = GatedLog()
    handler = make_handler(
        LaggingView(), log, ack_timeout=30.0, command_timeout=0.1, doubt_window=0.0
    )
    started = time.monotonic()
    with pytest.raises(OrderInDoubtError, match="no leader or too few in-sync replicas"):
        handler.handle(CreateOrder("1", "u1", "57", 2, 12))
    assert time.monotonic() - started < 5
    # librdkafka may still write the event until it reports on it (up to ack_timeout):
    # the order stays in doubt at least that long, whatever the doubt window.
    with pytest.raises(OrderInDoubtError):
        handler.handle(ChangePrice("1", 13))


def test_timeouts_are_503_problems_with_retry_after() -> None:
    log = GatedLog()
    handler = make_handler(LaggingView(), log, command_timeout=0.2)
    client = TestClient(create_command_app(handler))
    unacknowledged = client.post("/orders", json={"id": "1", **ORDER})
    body = problem(unacknowledged, 503, ORDER_IN_DOUBT.type)
    assert unacknowledged.headers["retry-after"] == "1"
    assert "no leader" in body["detail"]

    with ThreadPoolExecutor(1) as pool:
        # A command with 30 s more to go holds order 3's lock, awaiting its ack.
        later = time.monotonic() + 30
        first = pool.submit(handler.handle, CreateOrder("3", "u1", "57", 2, 12), received_at=later)
        appended(log, 2)
        waiting = client.post("/orders/3/price", json={"price": 13})
        body = problem(waiting, 503, COMMAND_TIMEOUT_TYPE)
        assert waiting.headers["retry-after"] == "1"
        assert body["order_id"] == "3"
        log.acknowledge()
        assert first.result(5).version == 1
    assert [e.order_id for e in log.events] == ["1", "3"]
