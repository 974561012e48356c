"""The write path: decide a command, append its event, and let the log say if it won.

Several command instances share the events topic's partitions, each deciding the
commands of the orders in the partitions it holds (others are forwarded to it). The
log, not a lock or a fencing token, is the judge: the fold keeps the first event of each
version of an order, in partition order, and drops any later one as a duplicate. So per
command, with the order's lock held (commands on one order are serialized inside the
instance; a lock stripe is shared by a few orders):

1. if it carries an ``Idempotency-Key`` the log has applied an event for, answer that
   event's outcome and append nothing (the same key with another request: 422);
2. ``decide`` against the order's latest state; an empty result is an idempotent no-op
   and appends nothing;
3. append the event and wait until this instance's own fold of the partition has folded
   it (``FoldWatch``): applied, it is the answer (with its partition and offset); dropped,
   it lost a race with another event of its version (another instance, or this one
   before a rebalance): a create is a 409, a conditional change a 412 with the version
   that won, and an unconditional change is decided again against the state that won.

Commands on different orders wait for their confirmations side by side (each HTTP
request on its own worker thread), so the fold's round trip is paid once per order, not
once per command in the service.

The overlay holds every state the fold computed that the store may not have committed
yet (the fold tells it, ``fresh``), so a command is decided against the fold's latest
whoever wrote it; entries go once the store has caught up with them (``prune``) and with
their partition when it is revoked.

An event whose acknowledgement fails, or whose fold does not come within the command's
time (its partition revoked meanwhile, or the broker slow), may or may not be in the
log. The command is answered 503 (``AppendError``, ``OrderInDoubtError``) and, until the
fold shows that version (or ``doubt_window`` passes without it), further commands on the
order are refused with ``OrderInDoubtError`` rather than decided against a state that may
be one event behind.

A command has ``command_timeout`` seconds from its arrival, for its turn at the lock and
for the append and its fold together: a partition without a leader must not hold a client
(and a worker thread) for librdkafka's whole message timeout. A command still waiting for
its turn then is refused with ``CommandTimeoutError`` (nothing appended).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Generator
from concurrent.futures import Future, InvalidStateError
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from msgspec.structs import replace

from es_orders.command.confirm import Confirmation, KeyOutcome, UnconfirmedError
from es_orders.command.errors import (
    AppendError,
    CommandTimeoutError,
    CommandUnavailableError,
    ContendedError,
    IdempotencyKeyReusedError,
    NotReadyError,
    OrderInDoubtError,
    PartitionUnavailableError,
)
from es_orders.domain import (
    Command,
    CreateOrder,
    Event,
    Idempotency,
    OrderAlreadyExistsError,
    OrderState,
    VersionConflictError,
    decide,
)
from es_orders.errors import EsOrdersError
from es_orders.kafka.partitioner import partition_for
from es_orders.runtime.views import Readiness

log = logging.getLogger(__name__)

_LOCK_STRIPES = 256
# An unconditional change that lost a race is decided again against the state that won,
# at most this many times: then its order is too contended to promise anything (503).
_ATTEMPTS = 5
# How long a conditional change waits for the fold to reach the version the client
# expects, when this instance's state of the order is older (it just took the partition
# over, and the previous holder's last events are still being folded).
_VERSION_WAIT = 0.5


class OrderStates(Protocol):
    """The view the handler decides against: what the event log has folded so far.

    ``get`` raises a ``CommandUnavailableError`` (``NotReadyError``) while the order's
    partition is not held by this instance.
    """

    def get(self, order_id: str) -> OrderState | None: ...


class EventLog(Protocol):
    """Where accepted events go; the future completes when the broker acknowledged."""

    def append(self, event: Event) -> Future[Any]: ...


class Confirmer(Protocol):
    """The fold's word on appended events (``confirm.FoldWatch``)."""

    def expect(self, event_id: str, partition: int) -> Future[Confirmation]: ...

    def forget(self, event_id: str) -> None: ...


class KeyOutcomes(Protocol):
    """First outcomes of requests by Idempotency-Key (``confirm.IdempotencyIndex``)."""

    def lookup(self, order_id: str, key: str) -> KeyOutcome | None: ...

    def synced_since(self) -> float: ...

    def sync(self, timeout: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class Accepted:
    """A command's outcome: the order's version afterwards, how many events it added, and
    where the order's last event is in the log (``offset`` None: not known here, for a
    no-op on an order whose last event this instance has not folded since it started)."""

    order_id: str
    version: int
    appended: int
    partition: int | None = None
    offset: int | None = None
    replayed: bool = False  # the first outcome of an earlier request with the same key


@dataclass(frozen=True, slots=True)
class _Doubt:
    version: int
    until: float


@dataclass(frozen=True, slots=True)
class _Entry:
    state: OrderState
    partition: int
    offset: int


class _Overlay:
    """States the fold computed that the store may not have committed yet, by order id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def get(self, order_id: str) -> _Entry | None:
        return self._entries.get(order_id)  # one dict read: atomic under the GIL

    def put(self, entry: _Entry) -> None:
        with self._lock:
            self._entries[entry.state.id] = entry

    def discard(self, entry: _Entry) -> None:
        """Drop ``entry`` unless a newer entry has replaced it meanwhile."""
        with self._lock:
            if self._entries.get(entry.state.id) is entry:
                del self._entries[entry.state.id]

    def drop(self, order_id: str) -> None:
        with self._lock:
            self._entries.pop(order_id, None)

    def keep_only(self, partitions: set[int]) -> int:
        """Drop the entries of partitions not in ``partitions``; how many went."""
        with self._lock:
            gone = [k for k, e in self._entries.items() if e.partition not in partitions]
            for k in gone:
                del self._entries[k]
        return len(gone)

    def snapshot(self) -> list[_Entry]:
        with self._lock:
            return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class _Lock:
    """Wait for the order's lock, at most ``timeout`` s; the answer: whether it was taken."""

    lock: threading.Lock
    timeout: float


@dataclass(frozen=True, slots=True)
class _Confirm:
    """Wait for the fold's word on an event, at most ``timeout`` s."""

    future: Future[Confirmation]
    timeout: float


@dataclass(frozen=True, slots=True)
class _Pause:
    seconds: float


@dataclass(frozen=True, slots=True)
class _SyncKeys:
    """Read the idempotency topic up to now, at most ``timeout`` s; whether it was."""

    timeout: float


_Step = _Lock | _Confirm | _Pause | _SyncKeys


def _resume(
    steps: Generator[_Step, Any, Accepted], answer: Any, error: Exception | None
) -> _Step | Accepted:
    """The decision's next wait, or its outcome once it needs none. ``answer`` is what
    the last wait gave; ``error``, what it failed with, is raised where it waited. The
    one loop both ``handle`` and ``handle_async`` drive the steps with."""
    try:
        return steps.throw(error) if error is not None else steps.send(answer)
    except StopIteration as done:
        outcome: Accepted = done.value
        return outcome


async def _acquire(lock: threading.Lock, timeout: float) -> bool:
    """Take a lock a thread may hold too, without blocking the event loop: tried, and
    tried again after short sleeps. A lock is contended only by commands on orders of one
    stripe at the same moment."""
    until = time.monotonic() + timeout
    pause = 0.0005
    while not lock.acquire(blocking=False):
        if time.monotonic() >= until:
            return False
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.01)
    return True


def now_to_the_millisecond() -> datetime:
    """Now, as precisely as the wire keeps an event's time (``codec.format_instant``): the
    fold's state must be the one the log's fold gives, not a microsecond apart."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def request_digest(command: Command) -> str:
    """What identifies a request for its Idempotency-Key: the command, with every value."""
    canonical = json.dumps([type(command).__name__, asdict(command)], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class CommandHandler:
    """Decides and records commands; thread-safe (HTTP threads and the simulator share it)."""

    def __init__(
        self,
        states: OrderStates,
        events: EventLog,
        readiness: Callable[[], Readiness],
        *,
        confirmer: Confirmer,
        keys: KeyOutcomes,
        partitions: int,
        held_since: Callable[[int], float | None],
        ack_timeout: float,
        command_timeout: float | None = None,
        doubt_window: float = 30.0,
        caught_up_at: Callable[[str], float] = lambda _order_id: math.inf,
        committed: Callable[[int], int | None] | None = None,
        clock: Callable[[], datetime] = now_to_the_millisecond,
        new_event_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._states = states
        self._events = events
        self._readiness = readiness
        self._confirmer = confirmer
        self._keys = keys
        self.partitions = partitions
        # Since when (time.monotonic) this instance holds a partition with its fold read
        # to the end; None while it does not.
        self._held_since = held_since
        # How long librdkafka may take to report on an event (its message timeout and a
        # margin), and how long a command may take in all (None: as long as that).
        self._ack_timeout = ack_timeout
        self._command_timeout = command_timeout
        self.command_timeout = command_timeout or ack_timeout
        self._doubt_window = doubt_window
        # When (time.monotonic) the view last reached the end of the order's partition.
        self._caught_up_at = caught_up_at
        # The partition's next offset the store has not committed (None: not held here);
        # None: ask the view for each order instead.
        self._committed = committed
        self._clock = clock
        self._new_event_id = new_event_id
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._overlay = _Overlay()
        self._doubts: dict[str, _Doubt] = {}  # read and written under the order's lock

    def readiness(self) -> Readiness:
        return self._readiness()

    def partition_of(self, order_id: str) -> int:
        return partition_for(order_id.encode(), self.partitions)

    def holds(self, partition: int) -> bool:
        """Whether commands on orders of ``partition`` are decided here now."""
        return self._held_since(partition) is not None

    @property
    def pending(self) -> int:
        """How many orders have folded states the store has not committed yet."""
        return len(self._overlay)

    def fresh(self, state: OrderState, partition: int, offset: int) -> None:
        """The fold computed ``state`` at ``offset`` (called on the fold's thread)."""
        self._overlay.put(_Entry(state, partition, offset))

    def released(self, held: set[int]) -> None:
        """Only ``held`` partitions are held now: forget the fold's states of the others
        (the store of a partition taken back later is read again, as the fold left it)."""
        if self._overlay.keep_only(held):
            log.info("overlay: dropped the states of partitions no longer held")

    def current(self, order_id: str) -> OrderState | None:
        """The order's latest known state: its overlay entry, else the view's."""
        pending = self._overlay.get(order_id)
        return pending.state if pending is not None else self._states.get(order_id)

    def handle(
        self, command: Command, *, received_at: float | None = None, key: str | None = None
    ) -> Accepted:
        """Decide and append ``command``; raise a ``DomainError`` or ``CommandUnavailableError``.

        ``received_at`` (``time.monotonic()``) is when the command arrived, which starts
        its command timeout; None: now. ``key``: the request's Idempotency-Key. Blocks the
        calling thread while it waits (the simulator's); HTTP requests use ``handle_async``.
        """
        steps = self._steps(command, received_at, key)
        answer: Any = None
        error: Exception | None = None
        while not isinstance(step := _resume(steps, answer, error), Accepted):
            answer, error = None, None
            try:
                match step:
                    case _Lock(lock, timeout):
                        answer = lock.acquire(timeout=timeout)
                    case _Confirm(future, timeout):
                        answer = future.result(timeout=timeout)
                    case _Pause(seconds):
                        time.sleep(seconds)
                    case _SyncKeys(timeout):
                        answer = self._keys.sync(timeout)
            except Exception as exc:  # handed to the step that waited, to raise there
                error = exc
        return step

    async def handle_async(
        self, command: Command, *, received_at: float | None = None, key: str | None = None
    ) -> Accepted:
        """``handle`` on the event loop: its waits are awaited, so a command costs no
        worker thread and no hand-over between threads (and the GIL) on its way back."""
        steps = self._steps(command, received_at, key)
        answer: Any = None
        error: Exception | None = None
        while not isinstance(step := _resume(steps, answer, error), Accepted):
            answer, error = None, None
            try:
                match step:
                    case _Lock(lock, timeout):
                        answer = await _acquire(lock, timeout)
                    case _Confirm(future, timeout):
                        # shield: a timeout must not cancel the fold's future.
                        wrapped = asyncio.wrap_future(future)
                        answer = await asyncio.wait_for(asyncio.shield(wrapped), timeout)
                    case _Pause(seconds):
                        await asyncio.sleep(seconds)
                    case _SyncKeys(timeout):
                        answer = await asyncio.to_thread(self._keys.sync, timeout)
            except Exception as exc:  # handed to the step that waited, to raise there
                error = exc
        return step

    def _steps(
        self, command: Command, received_at: float | None, key: str | None
    ) -> Generator[_Step, Any, Accepted]:
        """The decision of one command, as the waits it needs: written once, run by a
        thread (``handle``) or on the event loop (``handle_async``)."""
        started = time.monotonic() if received_at is None else received_at
        deadline = started + (self._command_timeout or self._ack_timeout)
        readiness = self._readiness()
        if not readiness.ready:
            raise NotReadyError(readiness.waiting_for)
        order_id = command.order_id
        partition = self.partition_of(order_id)
        since = self._held_since(partition)
        if since is None:
            raise PartitionUnavailableError(partition)
        idempotency = None
        if key is not None:
            idempotency = Idempotency(key, request_digest(command))
            # Outcomes the partition's previous holders wrote must be read before a key
            # can be said to be new here.
            if self._keys.synced_since() < since:
                synced = yield _SyncKeys(max(0.0, deadline - time.monotonic()))
                if not synced:
                    raise NotReadyError(("idempotency keys: reading the idempotency topic",))
        # crc32, not hash(): the stripe of an id must not depend on the process's hash seed.
        lock = self._locks[zlib.crc32(order_id.encode()) % _LOCK_STRIPES]
        if not (yield _Lock(lock, max(0.0, deadline - time.monotonic()))):
            raise CommandTimeoutError(order_id, deadline - started)
        try:
            if time.monotonic() >= deadline:
                raise CommandTimeoutError(order_id, deadline - started)
            self._check_doubt(order_id)
            return (yield from self._decide(command, partition, idempotency, deadline))
        finally:
            lock.release()

    def _known(self, order_id: str, idempotency: Idempotency | None) -> Accepted | None:
        """The first outcome of the request ``idempotency`` names, if the log has one."""
        if idempotency is None:
            return None
        known = self._keys.lookup(order_id, idempotency.key)
        if known is None:
            return None
        if known.digest != idempotency.digest:
            raise IdempotencyKeyReusedError(order_id, idempotency.key)
        return Accepted(order_id, known.version, 0, known.partition, known.offset, replayed=True)

    def _decide(
        self,
        command: Command,
        partition: int,
        idempotency: Idempotency | None,
        deadline: float,
    ) -> Generator[_Step, Any, Accepted]:
        order_id = command.order_id
        for _ in range(_ATTEMPTS):
            known = self._known(order_id, idempotency)
            if known is not None:
                return known
            entry = self._overlay.get(order_id)
            state = entry.state if entry is not None else self._states.get(order_id)
            try:
                events = decide(command, state, now=self._clock(), new_event_id=self._new_event_id)
            except VersionConflictError as exc:
                if exc.current >= exc.expected or not (
                    yield from self._await_version(order_id, exc.expected, deadline)
                ):
                    raise
                continue  # this instance was behind the client: decide again
            if not events:
                assert state is not None  # decide creates a missing order or refuses
                offset = entry.offset if entry is not None else None
                return Accepted(order_id, state.version, 0, partition, offset)
            (event,) = events
            if idempotency is not None:
                event = replace(event, idempotency=idempotency)
            confirmation = yield from self._append(event, partition, deadline)
            if confirmation.applied:
                return Accepted(order_id, event.version, 1, partition, confirmation.offset)
            won = confirmation.state
            current = won.version if won is not None else 0
            log.info(
                "event lost a race order=%s version=%s partition=%d offset=%d current=%d",
                order_id,
                event.version,
                partition,
                confirmation.offset,
                current,
            )
            if (known := self._known(order_id, idempotency)) is not None:
                return known  # the same request, retried elsewhere, came first
            if isinstance(command, CreateOrder):
                raise OrderAlreadyExistsError(order_id)
            if command.expected_version is not None:
                raise VersionConflictError(order_id, command.expected_version, current)
        raise ContendedError(order_id, _ATTEMPTS)

    def _await_version(
        self, order_id: str, version: int, deadline: float
    ) -> Generator[_Step, Any, bool]:
        """Wait (briefly) until the order's state here is at ``version`` or beyond."""
        until = min(deadline, time.monotonic() + _VERSION_WAIT)
        pause = 0.002
        while time.monotonic() < until:
            state = self.current(order_id)
            if state is not None and state.version >= version:
                return True
            yield _Pause(pause)
            pause = min(pause * 2, 0.05)
        return False

    def _append(
        self, event: Event, partition: int, deadline: float
    ) -> Generator[_Step, Any, Confirmation]:
        confirmed = self._confirmer.expect(event.event_id, partition)
        sent_at = time.monotonic()
        try:
            delivery = self._events.append(event)
        except EsOrdersError as exc:  # not queued, so not written: no doubt about it
            self._confirmer.forget(event.event_id)
            raise AppendError(f"cannot append the event: {exc}") from exc

        def failed(done: Future[Any]) -> None:
            error = done.exception()
            if error is not None:
                # Confirmed meanwhile (the fold was quicker): that answer stands.
                with contextlib.suppress(InvalidStateError):
                    confirmed.set_exception(error)

        delivery.add_done_callback(failed)
        waited = min(self._ack_timeout, max(0.0, deadline - sent_at))
        try:
            confirmation: Confirmation = yield _Confirm(confirmed, waited)
        except TimeoutError as exc:
            self._confirmer.forget(event.event_id)
            # librdkafka may still write it until it reports on it: the doubt lasts from then.
            why = (
                "the broker acknowledged its event, but this instance's fold has not reached "
                f"it within {waited:.2g} s"
                if delivery.done()
                else f"the broker did not acknowledge its event within {waited:.2g} s: the "
                "broker is unreachable, or the order's partition has no leader or too few "
                "in-sync replicas right now"
            )
            self._doubt(event, sent_at + self._ack_timeout, why)
            raise OrderInDoubtError(event.order_id, event.version, 1, why, appended=True) from exc
        except UnconfirmedError as exc:
            self._doubt(event, time.monotonic(), str(exc))
            why = f"{exc}; its next holder decides it"
            raise OrderInDoubtError(event.order_id, event.version, 1, why, appended=True) from exc
        except EsOrdersError as exc:
            self._confirmer.forget(event.event_id)
            self._doubt(event, time.monotonic(), str(exc))
            raise AppendError(
                f"the broker did not acknowledge version {event.version} of order "
                f"{event.order_id!r}; it may or may not have been written"
            ) from exc
        return confirmation

    def _doubt(self, event: Event, settled_at: float, error: str) -> None:
        """Refuse commands on the event's order until the view shows it, or the window passes
        after ``settled_at`` (when librdkafka has reported on the event, or must have)."""
        self._doubts[event.order_id] = _Doubt(event.version, settled_at + self._doubt_window)
        log.warning(
            "event in doubt order=%s version=%s error=%s",
            event.order_id,
            event.version,
            error,
        )

    def _check_doubt(self, order_id: str) -> None:
        doubt = self._doubts.get(order_id)
        if doubt is None:
            return
        state = self.current(order_id)
        if state is not None and state.version >= doubt.version:
            # Whichever event of that version the log kept, the state now follows it.
            log.info("event in doubt was settled order=%s version=%s", order_id, doubt.version)
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
            raise OrderInDoubtError(order_id, doubt.version, retry_after=1, appended=False)
        del self._doubts[order_id]

    def prune(self) -> int:
        """Drop overlay entries the store has caught up with; how many are left."""
        left = 0
        for pending in self._overlay.snapshot():
            if self._stored(pending):
                self._overlay.discard(pending)
            else:
                left += 1
        return left

    def _stored(self, entry: _Entry) -> bool:
        """Whether the store holds ``entry``'s state (or a later one) of its order."""
        if self._committed is not None:
            # By position, not by a read of each order: the store has everything before
            # its partition's committed position (a read each took ~50 us; a pruning of
            # thousands of entries stalled requests for tens of milliseconds).
            committed = self._committed(entry.partition)
            return committed is not None and entry.offset < committed
        try:
            stored = self._states.get(entry.state.id)
        except CommandUnavailableError:
            # Its partition is not held right now (a rebalance): keep the entry. An
            # error here would end the pruner's thread, and with it the service.
            return False
        return stored is not None and stored.version >= entry.state.version


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
