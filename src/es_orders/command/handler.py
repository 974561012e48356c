"""The write path: decide a command against the current state, append, and remember.

Per command, with the order's lock held (commands on one order are serialized inside
the instance; a lock stripe is shared by a few orders):

1. read the order's current state (below);
2. ``decide``; an empty result is an idempotent no-op and appends nothing;
3. append each event and wait for the broker's acknowledgement;
4. evolve the overlay, so the next command sees the event before the view has folded
   its echo from the topic.

The overlay holds the states this instance's acknowledged events produced. This
instance is the only writer of the events topic (one command service per topic, see
``adapters.owns_every_partition``), so an overlay entry is never older than the view:
while an order has one, it is the current state and the view is not read at all (that
read is most of a command's cost). Entries go once the view has caught up with them
(``prune``); a reader that misses an entry dropped meanwhile reads the view, which by
then holds that version or a later one, since the view never goes back.

An event whose acknowledgement fails or times out may still have been written. Its
order's overlay entry is dropped and, until the view shows that version (or
``doubt_window`` passes without it), further commands on the order are refused with
``OrderInDoubtError`` rather than decided against a state that may be one event behind:
the next event would reuse the version, and the fold would drop it as a duplicate.

A command has ``command_timeout`` seconds from its arrival, for its turn at the lock and
for the acknowledgement together: a partition without a leader must not hold a client
(and a worker thread) for librdkafka's whole message timeout. A command still waiting
for its turn then is refused with ``CommandTimeoutError`` (nothing appended); one waiting
for its acknowledgement gets ``AppendError`` and puts its order in doubt. Such an event
may still be written until librdkafka gives up on it (``ack_timeout``), so the doubt
window is counted from then.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from es_orders.command.errors import (
    AppendError,
    CommandTimeoutError,
    CommandUnavailableError,
    NotReadyError,
    OrderInDoubtError,
)
from es_orders.domain import Command, Event, OrderState, decide, evolve
from es_orders.errors import EsOrdersError
from es_orders.runtime.views import Readiness

log = logging.getLogger(__name__)

_LOCK_STRIPES = 256


class OrderStates(Protocol):
    """The view the handler decides against: what the event log has folded so far.

    ``get`` raises a ``CommandUnavailableError`` (``NotReadyError``) while the order's
    partition is not held by this instance.
    """

    def get(self, order_id: str) -> OrderState | None: ...


class EventLog(Protocol):
    """Where accepted events go; the future completes when the broker acknowledged."""

    def append(self, event: Event) -> Future[Any]: ...


@dataclass(frozen=True, slots=True)
class Accepted:
    """A command's outcome: the order's version afterwards and how many events it added."""

    order_id: str
    version: int
    appended: int


@dataclass(frozen=True, slots=True)
class _Doubt:
    version: int
    until: float


class _Overlay:
    """Acknowledged states the view may not have folded yet, by order id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, OrderState] = {}

    def get(self, order_id: str) -> OrderState | None:
        with self._lock:
            return self._states.get(order_id)

    def put(self, state: OrderState) -> None:
        with self._lock:
            self._states[state.id] = state

    def discard(self, state: OrderState) -> None:
        """Drop ``state`` unless a newer entry has replaced it meanwhile."""
        with self._lock:
            if self._states.get(state.id) is state:
                del self._states[state.id]

    def drop(self, order_id: str) -> None:
        with self._lock:
            self._states.pop(order_id, None)

    def snapshot(self) -> list[OrderState]:
        with self._lock:
            return list(self._states.values())

    def __len__(self) -> int:
        return len(self._states)


def _now_to_the_millisecond() -> datetime:
    """Now, as precisely as the wire keeps an event's time (``codec.format_instant``): the
    overlay's state must be the one the log's fold gives, not a microsecond apart."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class CommandHandler:
    """Decides and records commands; thread-safe (HTTP threads and the simulator share it)."""

    def __init__(
        self,
        states: OrderStates,
        events: EventLog,
        readiness: Callable[[], Readiness],
        *,
        ack_timeout: float,
        command_timeout: float | None = None,
        doubt_window: float = 30.0,
        caught_up_at: Callable[[str], float] = lambda _order_id: math.inf,
        clock: Callable[[], datetime] = _now_to_the_millisecond,
        new_event_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._states = states
        self._events = events
        self._readiness = readiness
        # How long librdkafka may take to report on an event (its message timeout and a
        # margin), and how long a command may take in all (None: as long as that).
        self._ack_timeout = ack_timeout
        self._command_timeout = command_timeout
        self._doubt_window = doubt_window
        # When (time.monotonic) the view last reached the end of the order's partition.
        self._caught_up_at = caught_up_at
        self._clock = clock
        self._new_event_id = new_event_id
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._overlay = _Overlay()
        self._doubts: dict[str, _Doubt] = {}  # read and written under the order's lock

    def readiness(self) -> Readiness:
        return self._readiness()

    @property
    def pending(self) -> int:
        """How many orders have acknowledged states the view has not shown yet."""
        return len(self._overlay)

    def current(self, order_id: str) -> OrderState | None:
        """The order's latest known state: its overlay entry, else the view's."""
        pending = self._overlay.get(order_id)
        return pending if pending is not None else self._states.get(order_id)

    def handle(self, command: Command, *, received_at: float | None = None) -> Accepted:
        """Decide and append ``command``; raise a ``DomainError`` or ``CommandUnavailableError``.

        ``received_at`` (``time.monotonic()``) is when the command arrived, which starts
        its command timeout; None: now.
        """
        started = time.monotonic() if received_at is None else received_at
        deadline = started + (self._command_timeout or self._ack_timeout)
        readiness = self._readiness()
        if not readiness.ready:
            raise NotReadyError(readiness.waiting_for)
        order_id = command.order_id
        # crc32, not hash(): the stripe of an id must not depend on the process's hash seed.
        lock = self._locks[zlib.crc32(order_id.encode()) % _LOCK_STRIPES]
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise CommandTimeoutError(order_id, deadline - started)
        try:
            if time.monotonic() >= deadline:
                raise CommandTimeoutError(order_id, deadline - started)
            self._check_doubt(order_id)
            state = self.current(order_id)
            events = decide(command, state, now=self._clock(), new_event_id=self._new_event_id)
            for event in events:
                self._append(event, deadline)
                state = evolve(state, event).state
                self._overlay.put(state)
        finally:
            lock.release()
        assert state is not None  # decide refuses a change to a missing order
        return Accepted(order_id, state.version, len(events))

    def _append(self, event: Event, deadline: float) -> None:
        sent_at = time.monotonic()
        try:
            future = self._events.append(event)
        except EsOrdersError as exc:  # not queued, so not written: no doubt about it
            raise AppendError(f"cannot append the event: {exc}") from exc
        waited = min(self._ack_timeout, max(0.0, deadline - sent_at))
        try:
            future.result(timeout=waited)
        except TimeoutError as exc:
            # librdkafka may still write it, until it reports on it: the doubt lasts from then.
            self._doubt(event, sent_at + self._ack_timeout, "no report in time")
            raise AppendError(
                f"the broker did not acknowledge version {event.version} of order "
                f"{event.order_id!r} in time ({waited:.2g} s): the broker is unreachable, or "
                "the order's partition has no leader or too few in-sync replicas right now. "
                "The event may or may not be written; until that is known, commands on this "
                "order are refused"
            ) from exc
        except EsOrdersError as exc:
            self._doubt(event, time.monotonic(), str(exc))
            raise AppendError(
                f"the broker did not acknowledge version {event.version} of order "
                f"{event.order_id!r}; it may or may not have been written"
            ) from exc

    def _doubt(self, event: Event, settled_at: float, error: str) -> None:
        """Refuse commands on the event's order until the view shows it, or the window passes
        after ``settled_at`` (when librdkafka has reported on the event, or must have)."""
        self._doubts[event.order_id] = _Doubt(event.version, settled_at + self._doubt_window)
        self._overlay.drop(event.order_id)
        log.warning(
            "event not acknowledged order=%s version=%s error=%s",
            event.order_id,
            event.version,
            error,
        )

    def _check_doubt(self, order_id: str) -> None:
        doubt = self._doubts.get(order_id)
        if doubt is None:
            return
        state = self._states.get(order_id)
        if state is not None and state.version >= doubt.version:
            log.info("event in doubt was written order=%s version=%s", order_id, doubt.version)
        elif time.monotonic() >= doubt.until and self._caught_up_at(order_id) >= doubt.until:
            # Lost only once the view has read its partition to the end after the window:
            # a view lagging behind (a busy service) has simply not folded it yet, and
            # deciding against it would write the same version twice.
            log.warning(
                "event in doubt never showed up, taken as lost order=%s version=%s",
                order_id,
                doubt.version,
            )
        else:
            raise OrderInDoubtError(order_id, doubt.version, retry_after=1)
        del self._doubts[order_id]

    def prune(self) -> int:
        """Drop overlay entries the view has caught up with; how many are left."""
        left = 0
        for pending in self._overlay.snapshot():
            try:
                stored = self._states.get(pending.id)
            except CommandUnavailableError:
                # Its partition is not held right now (a rebalance): keep the entry. An
                # error here would end the pruner's thread, and with it the service.
                left += 1
                continue
            if stored is not None and stored.version >= pending.version:
                self._overlay.discard(pending)
            else:
                left += 1
        return left


class OverlayPruner:
    """A ``serving.Worker`` that prunes the overlay every ``interval`` s, off the request path."""

    def __init__(self, handler: CommandHandler, interval: float = 5.0) -> None:
        self._handler = handler
        self._interval = interval
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self._interval):
            left = self._handler.prune()
            log.debug("overlay pruned entries_left=%s", left)

    def stop(self) -> None:
        self._stop.set()
