"""The log decides races between writers, and remembers Idempotency-Keys (no broker).

A rival writer (another command instance, or a stale holder of the partition) is an
event of the same version the fold reads first: ``RacingLog`` puts one in front.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from es_orders.command.errors import (
    ContendedError,
    IdempotencyKeyReusedError,
    OrderInDoubtError,
    PartitionUnavailableError,
)
from es_orders.command.handler import (
    Accepted,
    CommandHandler,
    now_to_the_millisecond,
    request_digest,
)
from es_orders.domain import (
    ChangePrice,
    ChangeQuantity,
    CreateOrder,
    Event,
    Idempotency,
    OrderAlreadyExistsError,
    OrderCreated,
    PriceChanged,
    VersionConflictError,
)
from es_orders.http.problems import IDEMPOTENCY_KEY_REUSED, VALIDATION_ERROR
from tests.unit.command_support import (
    ORDER,
    T0,
    ApiService,
    LaggingView,
    RecordingLog,
    make_handler,
    problem,
)


class RacingLog(RecordingLog):
    """Before each of the next ``times`` events of ``order_id``, a rival's event of the same
    version reaches the log first."""

    def __init__(self) -> None:
        super().__init__()
        self.rivals = 0
        self.order_id = ""
        self.rival_price = 99

    def append(self, event: Event) -> Future[None]:
        if self.rivals and event.order_id == self.order_id:
            self.rivals -= 1
            if isinstance(event, OrderCreated):
                rival: Event = replace_id(event, "rival-create")
            else:
                rival = PriceChanged(
                    f"rival-{event.version}", event.order_id, event.version, T0, self.rival_price
                )
            self.events.append(rival)
            self.fold.fold(rival)
        return super().append(event)


def replace_id(event: OrderCreated, event_id: str) -> OrderCreated:
    return OrderCreated(
        event_id,
        event.order_id,
        event.version,
        event.occurred_at,
        "rival",
        event.product_id,
        event.quantity,
        event.price,
    )


def judged(log: RecordingLog) -> CommandHandler:
    # Keys are kept for 24 hours from their event: events happen now here.
    return make_handler(LaggingView(), log, clock=now_to_the_millisecond)


def create(order_id: str = "1") -> CreateOrder:
    return CreateOrder(order_id, "u1", "57", 2, 12)


def test_a_conditional_change_that_lost_the_race_is_a_412_with_the_version_that_won() -> None:
    log = RacingLog()
    handler = judged(log)
    handler.handle(create())
    log.order_id, log.rivals = "1", 1
    with pytest.raises(VersionConflictError) as conflict:
        handler.handle(ChangePrice("1", 13, expected_version=1))
    assert (conflict.value.expected, conflict.value.current) == (1, 2)
    # Both version-2 events are in the log; the fold kept the rival's.
    assert [e.event_id for e in log.of("1") if e.version == 2] == ["rival-2", "event-2"]
    current = handler.current("1")
    assert current is not None and (current.version, current.price) == (2, 99)


def test_an_unconditional_change_that_lost_is_decided_again_against_the_winner() -> None:
    log = RacingLog()
    handler = judged(log)
    handler.handle(create())
    log.order_id, log.rivals = "1", 2
    accepted = handler.handle(ChangeQuantity("1", 7))
    # Lost twice (versions 2 and 3 went to rivals), applied as version 4.
    assert (accepted.version, accepted.appended) == (4, 1)
    current = handler.current("1")
    assert current is not None and (current.version, current.quantity, current.price) == (4, 7, 99)


def test_a_change_that_loses_every_race_is_a_503_not_a_success() -> None:
    log = RacingLog()
    handler = judged(log)
    handler.handle(create())
    log.order_id, log.rivals = "1", 100
    with pytest.raises(ContendedError):
        handler.handle(ChangeQuantity("1", 7))


def test_a_create_that_lost_the_race_is_a_409() -> None:
    log = RacingLog()
    handler = judged(log)
    log.order_id, log.rivals = "1", 1
    with pytest.raises(OrderAlreadyExistsError):
        handler.handle(create())
    current = handler.current("1")
    assert current is not None and current.user_id == "rival"


def test_a_retry_with_its_key_gets_the_first_outcome_and_appends_nothing() -> None:
    log = RecordingLog()
    handler = judged(log)
    first = handler.handle(create(), key="k-1")
    again = handler.handle(create(), key="k-1")
    assert (again.version, again.partition, again.offset) == (1, first.partition, first.offset)
    assert (again.appended, again.replayed) == (0, True)
    change = handler.handle(ChangePrice("1", 13), key="k-2")
    handler.handle(ChangePrice("1", 14))  # the order moves on
    retried = handler.handle(ChangePrice("1", 13), key="k-2")
    assert (retried.version, retried.offset, retried.replayed) == (2, change.offset, True)
    assert len(log.events) == 3
    assert log.events[0].idempotency == Idempotency("k-1", request_digest(create()))


def test_the_same_key_with_another_request_is_refused() -> None:
    handler = judged(RecordingLog())
    handler.handle(create())
    handler.handle(ChangePrice("1", 13), key="k")
    with pytest.raises(IdempotencyKeyReusedError):
        handler.handle(ChangePrice("1", 14), key="k")
    with pytest.raises(IdempotencyKeyReusedError):
        handler.handle(ChangePrice("1", 13, expected_version=2), key="k")


def test_a_key_applied_by_another_instance_is_known_from_the_fold() -> None:
    """The retry went elsewhere first: this instance learns of it from the log."""
    log = RecordingLog()
    handler = judged(log)
    handler.handle(create())
    command = ChangePrice("1", 13)
    idempotency = Idempotency("k", request_digest(command))
    elsewhere = PriceChanged("elsewhere", "1", 2, now_to_the_millisecond(), 13, idempotency)
    log.fold.fold(elsewhere)
    accepted = handler.handle(command, key="k")
    assert (accepted.version, accepted.replayed, len(log.events)) == (2, True, 1)


def test_racing_retries_of_one_keyed_request_append_it_once() -> None:
    log = RecordingLog()
    handler = judged(log)
    handler.handle(create())
    start = threading.Barrier(10)

    def retry(_: int) -> tuple[int, bool]:
        start.wait()
        accepted = handler.handle(ChangeQuantity("1", 9), key="same")
        return accepted.version, accepted.replayed

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(retry, range(10)))
    assert {version for version, _ in outcomes} == {2}
    assert sum(not replayed for _, replayed in outcomes) == 1
    assert len(log.of("1")) == 2


def test_a_partition_revoked_while_waiting_puts_the_order_in_doubt() -> None:
    log = RecordingLog()
    log.silent = True  # acknowledged later, if ever: the fold never shows it here
    handler = judged(log)
    watch = log.fold.watch
    assert watch is not None
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(handler.handle, create())
        while not log.events:
            pass
        watch.revoked(set())
        with pytest.raises(OrderInDoubtError, match="revoked"):
            waiting.result(5)


def test_a_conditional_change_waits_for_the_fold_to_reach_the_expected_version() -> None:
    """Just after a move, the client may know a version this instance has not folded yet:
    that is no conflict."""
    log = RecordingLog()
    handler = judged(log)
    handler.handle(create())
    late = PriceChanged("from-the-previous-holder", "1", 2, T0, 20)
    timer = threading.Timer(0.05, log.fold.fold, args=(late,))
    timer.start()
    accepted = handler.handle(ChangePrice("1", 21, expected_version=2))
    timer.join()
    assert accepted.version == 3


def test_the_api_replays_a_keyed_create_and_refuses_the_key_with_another_body() -> None:
    service = ApiService()
    headers = {"Idempotency-Key": "create-1"}
    first = service.client.post("/orders", json=ORDER, headers=headers)
    again = service.client.post("/orders", json=ORDER, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert first.headers["location"] == again.headers["location"]
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert len(service.log.events) == 1
    other = service.client.post("/orders", json={**ORDER, "price": 1}, headers=headers)
    body = problem(other, 422, IDEMPOTENCY_KEY_REUSED.type)
    assert body["idempotency_key"] == "create-1"
    bad = service.client.post("/orders", json=ORDER, headers={"Idempotency-Key": "a b"})
    problem(bad, 422, VALIDATION_ERROR.type)


def test_a_change_to_a_partition_not_held_here_is_a_503_partition_unavailable() -> None:
    log = RecordingLog()
    handler = make_handler(LaggingView(), log, held=lambda partition: partition != 0)
    with pytest.raises(PartitionUnavailableError):
        handler.handle(create("1"))  # order 1 is in partition 0
    assert log.events == []
    assert handler.handle(create("42")).version == 1  # partition 1


def test_on_the_event_loop_racing_commands_on_one_order_take_turns() -> None:
    """``handle_async`` (the HTTP path) shares the order's lock with threads: 20 at once
    with the same If-Match get one success, and unconditional ones a version each."""
    log = RecordingLog()
    handler = judged(log)
    handler.handle(create())

    async def race() -> tuple[list[Accepted | BaseException], list[Accepted | BaseException]]:
        conditional = [handler.handle_async(ChangePrice("1", 100 + n, 1)) for n in range(20)]
        first = await asyncio.gather(*conditional, return_exceptions=True)
        unconditional = [handler.handle_async(ChangeQuantity("1", 10 + n)) for n in range(20)]
        second = await asyncio.gather(*unconditional, return_exceptions=True)
        return first, second

    with ThreadPoolExecutor(1) as pool:  # a thread holds the lock meanwhile, for a while
        held = threading.Event()

        def hold() -> None:
            # Order 1's stripe, held by a thread: the loop must not block on it meanwhile.
            lock = handler._locks[zlib.crc32(b"1") % len(handler._locks)]
            with lock:
                held.set()
                time.sleep(0.05)

        holder = pool.submit(hold)
        held.wait(5)
        first, second = asyncio.run(race())
        holder.result(5)
    assert sum(isinstance(o, VersionConflictError) for o in first) == 19
    assert [o.version for o in first if isinstance(o, Accepted)] == [2]
    assert sorted(o.version for o in second if isinstance(o, Accepted)) == list(range(3, 23))


def test_on_the_event_loop_an_event_not_folded_in_time_is_in_doubt() -> None:
    log = RecordingLog()
    log.silent = True
    handler = make_handler(LaggingView(), log, ack_timeout=0.05)
    with pytest.raises(OrderInDoubtError):
        asyncio.run(handler.handle_async(create()))
