"""What a fold worker tells the service it runs in, and what the service makes of it.

A worker (``Materializer``) owns its partitions' stores and positions; nothing else
touches them. It describes itself in a ``WorkerStatus``, a frozen value it sends
whenever something changes (an assignment, restore progress, a checkpoint, a revocation:
the revocation is sent before the partition can go to another worker). In the query
service the status crosses a pipe from the worker process (``runtime.workers``); in the
command service it is handed over on the same process.

``StatusBoard`` keeps the last status of every worker and derives, once per update, an
immutable ``Snapshot``: which partitions can be read and from which store file, the
readiness, the counters. HTTP threads only ever read the current snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from es_orders.runtime.clients import Counters
from es_orders.runtime.partition import Phase, store_path
from es_orders.runtime.store import StoreReader
from es_orders.runtime.views import Readiness


class PartitionStatus(msgspec.Struct, frozen=True):
    number: int
    phase: str  # a ``Phase`` value
    generation: int  # of its store file: readers open that file and no other
    assigned_at: float  # Unix seconds
    restored_records: int = 0
    restore_seconds: float | None = None  # None until its restore has finished
    consumed: int | None = None  # next offset to fold
    # The partition's end as the consumer last heard it from the broker (the last stable
    # offset, as the fold reads committed records only); None before its first fetch.
    end: int | None = None
    # time.monotonic() of the last time the partition was read to its end (the clock is
    # system-wide on Linux, so a worker's reading means the same in the service).
    read_to_end_at: float | None = None
    # "complete", "rebuilding" (after a restore from the changelog), or None: not kept.
    history: str | None = None
    history_rebuilt: int | None = None  # next offset the rebuild folds
    history_target: int | None = None  # the rebuild ends below this offset


class WorkerStatus(msgspec.Struct, frozen=True):
    index: int
    pid: int
    joined: bool  # had an assignment from the group (possibly of nothing)
    partitions: tuple[PartitionStatus, ...]
    counters: Counters
    rss_bytes: int = 0
    peak_rss_bytes: int = 0
    cache_entries: int = 0
    cache_bytes: int = 0
    cache_limit_bytes: int = 0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(WorkerStatus)


def encode_status(status: WorkerStatus) -> bytes:
    return _encoder.encode(status)


def decode_status(data: bytes) -> WorkerStatus:
    return _decoder.decode(data)


@dataclass(frozen=True)
class WorkerEntry:
    """A worker as the service sees it: its last status, and whether its process runs."""

    index: int
    pid: int | None
    alive: bool
    restarts: int
    status: WorkerStatus | None


@dataclass(frozen=True)
class Snapshot:
    workers: tuple[WorkerEntry, ...] = ()
    # Partition -> reader of its store, for every partition one running worker serves.
    readable: dict[int, StoreReader] = field(default_factory=dict)
    # Partition -> its status, for every partition a running worker holds.
    held: dict[int, PartitionStatus] = field(default_factory=dict)
    owner: dict[int, int] = field(default_factory=dict)  # partition -> worker index
    readiness: Readiness = field(
        default_factory=lambda: Readiness(False, ("fold workers starting",))
    )
    counters: Counters = field(default_factory=Counters)


# What an instance whose workers hold no partition waits for. In a cluster of query
# instances that may be all it ever holds, and it is ready if others hold every one.
NONE_HELD = "partitions: none held (revoked, or lost with the group)"

# Instants, not counts: the earliest first record and the latest checkpoint of them all.
_INSTANTS = ("first_record_at", "last_checkpoint_at")


def _sum_counters(all_counters: list[Counters]) -> Counters:
    total = Counters()
    for counters in all_counters:
        for name in Counters.__struct_fields__:
            if name not in _INSTANTS:
                setattr(total, name, getattr(total, name) + getattr(counters, name))
    firsts = [c.first_record_at for c in all_counters if c.first_record_at]
    total.first_record_at = min(firsts, default=0.0)
    total.last_checkpoint_at = max((c.last_checkpoint_at for c in all_counters), default=0.0)
    return total


class StatusBoard:
    """The fold workers of one service as its HTTP threads see them.

    One thread writes (``started``, ``update``, ``exited``); any thread reads ``snapshot``,
    which is replaced, never changed.
    """

    def __init__(self, state_dir: Path, group_id: str, topic: str, workers: int) -> None:
        self._state_dir, self._group_id, self._topic = state_dir, group_id, topic
        self._expected = workers
        self._entries: dict[int, WorkerEntry] = {}
        self._retired: list[Counters] = []  # the last counters of workers that exited
        self._readers: dict[tuple[int, int], StoreReader] = {}
        self.snapshot = Snapshot()
        # Called, on the writing thread, after every new snapshot.
        self.listeners: list[Callable[[], None]] = []

    def started(self, index: int, pid: int) -> None:
        previous = self._entries.get(index)
        restarts = 0 if previous is None else previous.restarts + 1
        self._entries[index] = WorkerEntry(index, pid, True, restarts, None)
        self._publish()

    def update(self, status: WorkerStatus) -> None:
        entry = self._entries.get(status.index)
        restarts = 0 if entry is None else entry.restarts
        self._entries[status.index] = WorkerEntry(status.index, status.pid, True, restarts, status)
        self._publish()

    def exited(self, index: int) -> None:
        """The worker's process is gone: whatever it held is held by nobody now."""
        entry = self._entries.get(index)
        if entry is None:
            return
        if entry.status is not None:
            self._retired.append(entry.status.counters)
        self._entries[index] = WorkerEntry(index, entry.pid, False, entry.restarts, None)
        self._publish()

    def stats(self) -> dict[str, object]:
        """The counters of the fold (over every worker this service ran), each worker's
        process and cache, each held partition's progress; instants as Unix seconds."""
        snapshot = self.snapshot
        workers = []
        for entry in snapshot.workers:
            status = entry.status
            workers.append(
                {
                    "index": entry.index,
                    "pid": entry.pid,
                    "alive": entry.alive,
                    "restarts": entry.restarts,
                    "partitions": [p.number for p in status.partitions] if status else [],
                    "rss_bytes": status.rss_bytes if status else 0,
                    "peak_rss_bytes": status.peak_rss_bytes if status else 0,
                    "cache_entries": status.cache_entries if status else 0,
                    "cache_bytes": status.cache_bytes if status else 0,
                    "cache_limit_bytes": status.cache_limit_bytes if status else 0,
                }
            )
        partitions = {
            number: {
                "worker": snapshot.owner[number],
                "phase": part.phase,
                "assigned_at": part.assigned_at,
                "restored_records": part.restored_records,
                "restore_seconds": part.restore_seconds,
                "consumed": part.consumed,
                "caught_up_at": monotonic_to_unix(part.read_to_end_at),
            }
            for number, part in sorted(snapshot.held.items())
        }
        return {
            **msgspec.structs.asdict(snapshot.counters),
            "workers": workers,
            "partitions": partitions,
        }

    def _reader(self, number: int, generation: int) -> StoreReader:
        reader = self._readers.get((number, generation))
        if reader is None:
            path = store_path(self._state_dir, self._group_id, self._topic, number)
            reader = self._readers[(number, generation)] = StoreReader(path, generation)
        return reader

    def _publish(self) -> None:
        claims: dict[int, list[tuple[int, PartitionStatus]]] = {}
        for entry in self._entries.values():
            if entry.alive and entry.status is not None:
                for part in entry.status.partitions:
                    claims.setdefault(part.number, []).append((entry.index, part))
        held: dict[int, PartitionStatus] = {}
        owner: dict[int, int] = {}
        readable: dict[int, StoreReader] = {}
        waiting: list[str] = []
        for number, claimed in sorted(claims.items()):
            if len(claimed) > 1:
                # A revocation not heard of yet: the partition is moving between workers.
                waiting.append(f"partition {number}: moving between workers")
                continue
            index, part = claimed[0]
            held[number], owner[number] = part, index
            if part.phase != Phase.RESTORING:
                readable[number] = self._reader(number, part.generation)
            if part.phase != Phase.CAUGHT_UP:
                waiting.append(f"partition {number}: {part.phase}")
        # Readers of files nobody serves any more are dropped with their connections.
        live = {(n, r.generation) for n, r in readable.items()}
        self._readers = {k: r for k, r in self._readers.items() if k in live}
        entries = [self._entries.get(i) for i in range(self._expected)]
        starting = [
            i for i, e in enumerate(entries) if e is None or e.status is None or not e.status.joined
        ]
        gone = [i for i, e in enumerate(entries) if e is not None and not e.alive]
        if gone:
            waiting.insert(0, f"fold workers {gone}: exited, being replaced")
        elif starting:
            waiting.insert(0, "group join and partition assignment")
        elif not held and not waiting:
            # Lost with the group (the broker is gone, or the session expired) or revoked:
            # an instance that holds nothing cannot answer for any order.
            waiting.insert(0, NONE_HELD)
        states = {n: f"{p.phase} ({p.restored_records} restored)" for n, p in sorted(held.items())}
        counters = [e.status.counters for e in self._entries.values() if e.status is not None]
        self.snapshot = Snapshot(
            workers=tuple(self._entries[i] for i in sorted(self._entries)),
            readable=readable,
            held=held,
            owner=owner,
            readiness=Readiness(not waiting, tuple(waiting), states),
            counters=_sum_counters([*self._retired, *counters]),
        )
        for listener in self.listeners:
            listener()


def monotonic_to_unix(instant: float | None) -> float | None:
    """A ``time.monotonic()`` reading as Unix seconds (None stays None)."""
    if instant is None:
        return None
    return time.time() - (time.monotonic() - instant)
