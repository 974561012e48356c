"""In-memory stand-ins for the command handler's seams (the view, the event log), and the
command API over them."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response

from es_orders.codec import encode_event
from es_orders.command import create_command_app
from es_orders.command.confirm import FoldWatch, IdempotencyIndex
from es_orders.command.handler import CommandHandler, now_to_the_millisecond
from es_orders.domain import Event, OrderState, evolve
from es_orders.http import PROBLEM_MEDIA_TYPE
from es_orders.kafka.partitioner import partition_for
from es_orders.kafka.producer import DeliveryError
from es_orders.projection import Stored, fold_record
from es_orders.runtime.views import Readiness

PARTITIONS = 3
T0 = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)
ORDER = {"user_id": "u1", "product_id": "57", "quantity": 2, "price": 12}


class LaggingView:
    """The view the handler decides against; it shows events only when ``fold`` is called,
    as the real one shows them only once their echo came back through the topic."""

    def __init__(self) -> None:
        self.states: dict[str, OrderState] = {}

    def get(self, order_id: str) -> OrderState | None:
        return self.states.get(order_id)

    def fold(self, events: list[Event]) -> None:
        for event in events:
            self.states[event.order_id] = evolve(self.states.get(event.order_id), event).state


class LogFold:
    """The instance's own fold of the events topic (one partition): each record written is
    folded in order, by the real ``fold_record``, and the handler's ``FoldWatch`` told."""

    def __init__(self) -> None:
        self.stored: dict[str, Stored] = {}
        self.next_offsets = [0] * PARTITIONS
        self.watch: FoldWatch | None = None
        self._lock = threading.Lock()

    def fold(self, event: Event) -> None:
        with self._lock:
            key = event.order_id.encode()
            partition = partition_for(key, PARTITIONS)
            offset = self.next_offsets[partition]
            self.next_offsets[partition] += 1
            folded = fold_record(key, encode_event(event), 0, offset, self.stored.get)
            if folded.stored is not None:
                self.stored[event.order_id] = folded.stored
            if self.watch is not None:
                self.watch.folded(partition, offset, folded)


class RecordingLog:
    """An event log that acknowledges (and folds) at once, unless told to fail or to stay
    silent."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fail_next = False
        self.silent = False
        self.fold = LogFold()
        self._lock = threading.Lock()

    def append(self, event: Event) -> Future[None]:
        future: Future[None] = Future()
        with self._lock:
            if self.fail_next:
                self.fail_next = False
                future.set_exception(DeliveryError("record not acknowledged: Local: timed out"))
                return future
            self.events.append(event)
        if not self.silent:
            future.set_result(None)
            self.fold.fold(event)
        return future

    def of(self, order_id: str) -> list[Event]:
        return [e for e in self.events if e.order_id == order_id]


class Switch:
    """Readiness a test can turn off and on."""

    def __init__(self) -> None:
        self.readiness = Readiness(ready=True, partitions={0: "caught-up"})

    def __call__(self) -> Readiness:
        return self.readiness

    def off(self, *waiting_for: str) -> None:
        self.readiness = Readiness(False, waiting_for, {0: "restoring"})


class Keys(IdempotencyIndex):
    """The idempotency index without its topic: what the fold applied, always in sync."""

    def __init__(self) -> None:
        super().__init__({}, "idempotency", "test")

    def sync(self, timeout: float) -> bool:
        return True


def make_handler(
    view: LaggingView,
    log: RecordingLog,
    ready: Switch | None = None,
    caught_up_at: Callable[[str], float] = lambda _order_id: math.inf,
    *,
    held: Callable[[int], bool] = lambda _partition: True,
    clock: Callable[[], datetime] = lambda: T0,
    committed: Callable[[int], int | None] | None = None,
    **options: float,
) -> CommandHandler:
    counter = iter(range(1, 1_000_000))
    keys = Keys()
    handlers: list[CommandHandler] = []

    def fresh(state: OrderState, partition: int, offset: int) -> None:
        handlers[0].fresh(state, partition, offset)

    watch = FoldWatch(keys, fresh)
    log.fold.watch = watch
    handler = CommandHandler(
        view,
        log,
        ready or Switch(),
        confirmer=watch,
        keys=keys,
        partitions=PARTITIONS,
        held_since=lambda partition: 0.0 if held(partition) else None,
        ack_timeout=options.get("ack_timeout", 5.0),
        command_timeout=options.get("command_timeout"),
        doubt_window=options.get("doubt_window", 30.0),
        caught_up_at=caught_up_at,
        committed=committed,
        clock=clock,
        new_event_id=lambda: f"event-{next(counter)}",
    )
    handlers.append(handler)
    return handler


class ApiService:
    """The command API over a handler with in-memory seams, and a test client for it."""

    def __init__(self, token: str | None = None) -> None:
        self.view, self.log, self.ready = LaggingView(), RecordingLog(), Switch()
        # Events happen now: Idempotency-Keys are kept for 24 hours from their event.
        self.handler = make_handler(
            self.view, self.log, self.ready, ack_timeout=0.2, clock=now_to_the_millisecond
        )
        app = create_command_app(self.handler, api_token=token, new_order_id=lambda: "generated-id")
        self.client = TestClient(app)

    def create(self, order_id: str = "1", **fields: Any) -> Response:
        response: Response = self.client.post("/orders", json={"id": order_id, **ORDER, **fields})
        return response


def problem(response: Response, status: int, type_: str | None = None) -> dict[str, Any]:
    """The problem+json body of ``response``, after checking its status and type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    if type_ is not None:
        assert body["type"] == type_
    return body
