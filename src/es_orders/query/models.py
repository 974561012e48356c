"""The query service's JSON bodies besides order states (which the store holds encoded)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class WorkerModel(BaseModel):
    """One fold worker process of this instance."""

    index: int
    pid: int | None
    alive: bool = Field(description="Whether its process runs (one that exits is replaced).")
    restarts: int = Field(description="How often this worker was replaced after exiting.")
    partitions: list[int] = Field(description="Partitions it holds.")
    rss_bytes: int = Field(description="Resident memory of its process now.")
    peak_rss_bytes: int = Field(description="The most resident memory its process has had.")
    cache_entries: int = Field(description="Order states in its cache.")
    cache_bytes: int = Field(description="Estimated size of its cache.")
    cache_limit_bytes: int = Field(description="Its cache's budget (--cache-mb).")


class PartitionModel(BaseModel):
    """One partition a fold worker of this instance holds."""

    worker: int = Field(description="Index of the worker that holds it.")
    phase: str = Field(description="restoring, catching-up or caught-up.")
    assigned_at: float = Field(description="Unix time it was assigned to its worker.")
    restored_records: int = Field(description="Changelog records restored since then.")
    restore_seconds: float | None = Field(description="How long its restore took; null before.")
    consumed: int | None = Field(description="Next offset of the events topic to fold.")
    caught_up_at: float | None = Field(
        description="Unix time it was last read to the end of the events topic."
    )


class StatsModel(BaseModel):
    """The fold's counters since this process started (over all its fold workers, also
    those replaced), each worker's process and cache, and each held partition."""

    consumed: int = Field(description="Records of the events topic consumed.")
    changed: int = Field(description="Order states written (each also to the changelog).")
    duplicates: int = Field(description="Events skipped as already applied.")
    gaps: int = Field(description="Events applied after a version gap.")
    replayed: int = Field(description="Records at or below a stored order's offset, skipped.")
    dead_letters: int = Field(description="Records sent to the dead letter topic.")
    changelog_records: int
    restored_records: int = Field(description="Changelog records read to restore partitions.")
    batches: int = Field(description="Batches checkpointed.")
    first_record_at: float = Field(description="Unix time of the first record consumed; 0 if none.")
    last_checkpoint_at: float = Field(description="Unix time of the last checkpoint; 0 if none.")
    workers: list[WorkerModel] = Field(default_factory=list)
    partitions: dict[int, PartitionModel] = Field(default_factory=dict)


class ClusterPartitionModel(BaseModel):
    partition: int
    phase: str = Field(description="restoring, catching-up or caught-up.")
    consumed: int | None = Field(description="Next offset of the events topic to fold.")
    end: int | None = Field(description="The partition's end as the member last fetched it.")
    lag: int | None = Field(description="Records between the two; null before a fetch.")
    history: str | None = Field(
        default=None,
        description="Its orders' history: complete, rebuilding (after a restore from the "
        "changelog; history requests answer 503 meanwhile), or null: not kept.",
    )
    history_rebuilt: int | None = Field(
        default=None, description="While rebuilding: the next offset of the events to fold."
    )
    history_target: int | None = Field(
        default=None, description="While rebuilding: the offset the rebuild ends below."
    )


class MemberModel(BaseModel):
    """One query instance of the application, as the members topic describes it."""

    instance: str = Field(description="The id the instance drew when it started.")
    url: str = Field(description="Where it serves (its --advertised-url).")
    self: bool = Field(description="Whether it is the instance answering this request.")
    ready: bool
    waiting_for: list[str]
    started_at: float = Field(description="Unix time it started.")
    seen_seconds_ago: float = Field(description="Age of its last record (0 for itself).")
    partitions: list[ClusterPartitionModel]


class ClusterModel(BaseModel):
    """Every live query instance of this application and which one holds each partition."""

    members: list[MemberModel]
    owners: dict[int, str | None] = Field(
        description="Partition -> URL of the instance that answers for it; null: none now."
    )
