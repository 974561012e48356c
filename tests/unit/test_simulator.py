"""The simulator without a broker: seeds, valid changes, its rate, and refusals."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from es_orders.command.simulator import Simulator
from es_orders.domain import CancelOrder, CreateOrder, OrderCreated, fold
from tests.unit.command_support import LaggingView, RecordingLog, Switch, make_handler


def run_for(simulator: Simulator, seconds: float) -> None:
    thread = threading.Thread(target=simulator.run)
    thread.start()
    time.sleep(seconds)
    simulator.stop()
    thread.join(10)
    assert not thread.is_alive()


def test_creates_the_demo_orders_then_sends_valid_changes_at_its_rate() -> None:
    log = RecordingLog()
    handler = make_handler(LaggingView(), log)
    simulator = Simulator(handler, rate=200, rng=random.Random(7))
    started = time.monotonic()
    run_for(simulator, 1.0)
    elapsed = time.monotonic() - started

    assert [e.order_id for e in log.events[:3]] == ["1", "2", "3"]
    assert all(isinstance(e, OrderCreated) for e in log.events[:3])
    assert not any(isinstance(e, OrderCreated) for e in log.events[3:])
    # Loose bounds: the schedule, not the test machine's timing, is under test.
    assert 100 <= simulator.counters.sent <= 200 * elapsed + 5
    for order_id in ("1", "2", "3"):
        versions = [e.version for e in log.of(order_id)]
        assert versions == list(range(1, len(versions) + 1))
        assert fold(log.of(order_id)).state is not None
    kinds = Counter(type(e).__name__ for e in log.events[3:])
    assert set(kinds) == {"PriceChanged", "QuantityChanged", "ProductChanged"}


def test_carries_on_with_orders_that_exist_and_skips_refusals() -> None:
    log = RecordingLog()
    handler = make_handler(LaggingView(), log)
    handler.handle(CreateOrder("1", "u", "p", 1, 1))
    handler.handle(CreateOrder("2", "u", "p", 1, 1))
    handler.handle(CancelOrder("2"))
    simulator = Simulator(handler, rate=300, rng=random.Random(3))
    run_for(simulator, 0.5)

    created = [e.order_id for e in log.events if isinstance(e, OrderCreated)]
    assert created == ["1", "2", "3"]  # only the missing one was created
    assert [e.version for e in log.of("2")] == [1, 2]  # the cancelled one never changed
    assert simulator.counters.refused > 0
    assert len(log.of("1")) > 1


def test_waits_until_the_view_is_ready() -> None:
    log, ready = RecordingLog(), Switch()
    handler = make_handler(LaggingView(), log, ready)
    ready.off("partition 0: restoring")
    simulator = Simulator(handler, rate=100)
    thread = threading.Thread(target=simulator.run)
    thread.start()
    time.sleep(0.3)
    assert log.events == []
    ready.readiness = Switch().readiness
    time.sleep(0.5)
    simulator.stop()
    thread.join(10)
    assert len(log.events) > 3


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        Simulator(make_handler(LaggingView(), RecordingLog()), rate=0)
