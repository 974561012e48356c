"""The write path without a broker: overlay, echo, unacknowledged writes, serialization."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from es_orders.codec import LegacyUpdate, decode_record, encode_event
from es_orders.command import handler as handler_module
from es_orders.command.errors import AppendError, NotReadyError, OrderInDoubtError
from es_orders.command.handler import OverlayPruner
from es_orders.domain import (
    ChangePrice,
    ChangeQuantity,
    CreateOrder,
    OrderNotFoundError,
    PriceChanged,
    VersionConflictError,
    fold,
)
from tests.unit.command_support import T0, LaggingView, RecordingLog, Switch, make_handler


def create(order_id: str = "1") -> CreateOrder:
    return CreateOrder(order_id, "u1", "57", 2, 12)


def test_the_next_command_sees_an_acknowledged_event_before_the_view_does() -> None:
    view, log = LaggingView(), RecordingLog()
    handler = make_handler(view, log)
    handler.handle(create())
    accepted = handler.handle(ChangePrice("1", 13, expected_version=1))
    assert (accepted.version, accepted.appended) == (2, 1)
    assert [e.version for e in log.of("1")] == [1, 2]
    assert view.get("1") is None  # nothing folded yet: the overlay carried version 1


def test_the_echo_replaces_the_overlay_and_changes_nothing() -> None:
    view, log = LaggingView(), RecordingLog()
    handler = make_handler(view, log)
    handler.handle(create())
    handler.handle(ChangePrice("1", 13))
    view.fold(log.events)
    assert handler.prune() == 0
    current = handler.current("1")
    assert current is not None and (current.version, current.price) == (2, 13)
    assert handler.handle(ChangePrice("1", 14)).version == 3


def test_the_pruner_drops_what_the_view_has_caught_up_with() -> None:
    view, log = LaggingView(), RecordingLog()
    handler = make_handler(view, log)
    handler.handle(create("1"))
    handler.handle(create("2"))
    view.fold(log.of("1"))
    pruner = OverlayPruner(handler, interval=0.01)
    thread = threading.Thread(target=pruner.run)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while handler.pending != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        pruner.stop()
        thread.join(5)
    assert handler.current("2") is not None  # still known through the overlay


def test_pruning_keeps_the_entries_of_a_partition_not_held(monkeypatch: pytest.MonkeyPatch) -> None:
    view, log = LaggingView(), RecordingLog()
    handler = make_handler(view, log)
    handler.handle(create())
    view.fold(log.events)

    def revoked(order_id: str) -> None:
        raise NotReadyError((f"partition of {order_id}: revoked",))

    with monkeypatch.context() as patch:
        patch.setattr(view, "get", revoked)  # a rebalance took the partition away
        assert handler.prune() == 1  # kept, and no error to end the pruner with
    assert handler.prune() == 0


def test_an_overlay_entry_ahead_of_the_view_is_kept() -> None:
    view, log = LaggingView(), RecordingLog()
    handler = make_handler(view, log)
    handler.handle(create())
    view.fold(log.events)
    handler.handle(ChangePrice("1", 13))
    assert handler.prune() == 1
    current = handler.current("1")
    assert current is not None and current.version == 2


def test_the_overlay_holds_the_state_the_log_folds_to() -> None:
    view, log = LaggingView(), RecordingLog()
    handler = make_handler(view, log, clock=handler_module.now_to_the_millisecond)
    handler.handle(create())
    handler.handle(ChangePrice("1", 13))
    decoded = [decode_record(b"1", encode_event(e), 0) for e in log.events]
    on_the_wire = [e for e in decoded if not isinstance(e, LegacyUpdate)]
    assert len(on_the_wire) == 2
    assert handler.current("1") == fold(on_the_wire).state  # timestamps included


def test_a_no_op_appends_nothing_and_returns_the_current_version() -> None:
    view, log = LaggingView(), RecordingLog()
    handler = make_handler(view, log)
    handler.handle(create())
    accepted = handler.handle(ChangePrice("1", 12))
    assert (accepted.version, accepted.appended) == (1, 0)
    assert len(log.events) == 1


def test_refuses_every_command_until_ready() -> None:
    view, log, ready = LaggingView(), RecordingLog(), Switch()
    handler = make_handler(view, log, ready)
    ready.off("partition 0: restoring")
    with pytest.raises(NotReadyError, match="partition 0: restoring"):
        handler.handle(create())
    assert log.events == []


def test_an_unacknowledged_event_puts_its_order_in_doubt_until_the_view_shows_it() -> None:
    view, log = LaggingView(), RecordingLog()
    handler = make_handler(view, log)
    handler.handle(create())
    log.fail_next = True
    with pytest.raises(AppendError, match="may or may not"):
        handler.handle(ChangePrice("1", 13))
    # Deciding now could reuse version 2, which the fold would then drop as a duplicate.
    with pytest.raises(OrderInDoubtError):
        handler.handle(ChangeQuantity("1", 3))
    handler.handle(create("2"))  # other orders are unaffected

    # The unacknowledged event was written after all: once the fold shows it, carry on.
    log.fold.fold(PriceChanged("late", "1", 2, T0, 13))
    assert handler.handle(ChangeQuantity("1", 3)).version == 3


def test_a_doubt_ends_after_its_window_when_the_event_never_shows() -> None:
    view, log = LaggingView(), RecordingLog()
    handler = make_handler(view, log, doubt_window=0.0)
    handler.handle(create())
    view.fold(log.events)
    log.fail_next = True
    with pytest.raises(AppendError):
        handler.handle(ChangePrice("1", 13))
    assert handler.handle(ChangeQuantity("1", 3)).version == 2


def test_a_doubt_outlives_its_window_while_the_view_has_not_read_to_the_end() -> None:
    """A busy view that has not read its partition to the end since the window closed may
    still fold the event: deciding now could write the same version twice."""
    view, log = LaggingView(), RecordingLog()
    caught_up = {"at": -math.inf}
    handler = make_handler(view, log, caught_up_at=lambda _id: caught_up["at"], doubt_window=0.0)
    handler.handle(create())
    view.fold(log.events)
    log.fail_next = True
    with pytest.raises(AppendError):
        handler.handle(ChangePrice("1", 13))

    with pytest.raises(OrderInDoubtError):
        handler.handle(ChangeQuantity("1", 3))
    caught_up["at"] = time.monotonic()  # the view read the partition to its end since
    assert handler.handle(ChangeQuantity("1", 3)).version == 2


def test_an_event_not_folded_in_time_puts_its_order_in_doubt() -> None:
    view, log = LaggingView(), RecordingLog()
    handler = make_handler(view, log, ack_timeout=0.05)
    log.silent = True
    with pytest.raises(OrderInDoubtError):
        handler.handle(create())


def test_commands_on_one_order_are_serialized() -> None:
    view, log = LaggingView(), RecordingLog()
    handler = make_handler(view, log)
    handler.handle(create())
    start = threading.Barrier(20)

    def change(price: int) -> int:
        start.wait()
        return handler.handle(ChangePrice("1", price)).version

    with ThreadPoolExecutor(20) as pool:
        versions = sorted(pool.map(change, range(100, 120)))
    assert versions == list(range(2, 22))
    assert [e.version for e in log.of("1")] == list(range(1, 22))


def test_racing_conditional_commands_get_one_success() -> None:
    view, log = LaggingView(), RecordingLog()
    handler = make_handler(view, log)
    handler.handle(create())
    start = threading.Barrier(20)

    def change(price: int) -> str:
        start.wait()
        try:
            handler.handle(ChangePrice("1", price, expected_version=1))
        except VersionConflictError as exc:
            assert exc.current == 2
            return "conflict"
        return "ok"

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(change, range(100, 120)))
    assert (outcomes.count("ok"), outcomes.count("conflict")) == (1, 19)


def test_a_change_to_an_unknown_order_is_refused() -> None:
    handler = make_handler(LaggingView(), RecordingLog())
    with pytest.raises(OrderNotFoundError):
        handler.handle(ChangePrice("nope", 1))


def test_pruning_by_position_drops_what_the_store_has_committed() -> None:
    """The service prunes by the store's committed position, reading no order."""
    view, log = LaggingView(), RecordingLog()
    committed: dict[int, int] = {}
    handler = make_handler(view, log, committed=committed.get)
    handler.handle(create("1"))  # partition 0, offset 0
    handler.handle(ChangePrice("1", 13))  # offset 1
    handler.handle(create("42"))  # partition 1, offset 0
    assert handler.prune() == 2  # nothing committed: every state kept
    committed[0] = 1  # the store has offset 0 of partition 0: order 1's entry is newer
    assert handler.prune() == 2
    committed[0] = 2
    assert handler.prune() == 1
    current = handler.current("1")
    assert current is None  # the view (this test's store) was never told: proof of the prune
    committed[1] = 1
    assert handler.prune() == 0
