"""What the bench reads from a query service's ``GET /stats``, checked against its contract.

Besides the fold's counters (summed over the instance's fold workers, instants the
earliest and the latest), /stats describes each fold worker (its process, partitions,
memory and cache) and each partition it holds (its phase, when it was assigned to its
worker, how long its restore took). The bench reads restore times and assignment
instants here, never from a service's log.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from benchmarks.errors import BenchError

MIB = 2**20
_T = TypeVar("_T")


class WorkerStats(msgspec.Struct, frozen=True):
    """One fold worker: a process of its own folding ``partitions``."""

    index: int
    pid: int | None  # None before its process has started
    alive: bool
    partitions: list[int]
    rss_bytes: int
    peak_rss_bytes: int
    cache_entries: int
    cache_bytes: int
    cache_limit_bytes: int
    restarts: int


class PartitionStats(msgspec.Struct, frozen=True):
    """One partition a running worker holds; instants are Unix seconds."""

    worker: int
    phase: str  # restoring, catching-up or caught-up
    assigned_at: float
    restored_records: int
    restore_seconds: float | None  # None until its restore has finished
    caught_up_at: float | None


def workers_of(stats: dict[str, Any]) -> list[WorkerStats]:
    """The fold workers /stats lists, by index. Raises ``BenchError`` off the contract."""
    workers = _convert(stats, "workers", list[WorkerStats])
    return sorted(workers, key=lambda worker: worker.index)


def partitions_of(stats: dict[str, Any]) -> dict[int, PartitionStats]:
    """The partitions /stats lists, by number. Raises ``BenchError`` off the contract."""
    return _convert(stats, "partitions", dict[int, PartitionStats])


def _convert(stats: dict[str, Any], key: str, kind: type[_T]) -> _T:
    if key not in stats:
        raise BenchError(
            f"the query service's /stats has no {key!r} (keys: {', '.join(sorted(stats))}): "
            "it predates fold workers, which the bench measures"
        )
    try:
        return msgspec.convert(stats[key], kind, strict=False)
    except msgspec.ValidationError as exc:
        raise BenchError(f"the query service's /stats {key!r} is off its contract: {exc}") from exc


def settled(stats: dict[str, Any], partitions: int) -> bool:
    """Whether the service's group has settled: every partition held by a worker and
    caught up, and every worker holding one (the bench never asks for more workers than
    partitions)."""
    held = partitions_of(stats)
    return (
        sorted(held) == list(range(partitions))
        and all(p.phase == "caught-up" for p in held.values())
        and all(worker.partitions for worker in workers_of(stats))
    )
