"""One assigned partition: its store, its cached states, and where it stands."""

from __future__ import annotations

import enum
import logging
import time
from pathlib import Path

from es_orders.codec import decode_state
from es_orders.projection import Stored
from es_orders.runtime.cache import StateCache
from es_orders.runtime.history import RebuildProgress
from es_orders.runtime.store import PartitionStore

log = logging.getLogger(__name__)


class Phase(enum.StrEnum):
    RESTORING = "restoring"
    CATCHING_UP = "catching-up"
    CAUGHT_UP = "caught-up"


def store_path(state_dir: Path, group_id: str, topic: str, partition: int) -> Path:
    return state_dir / group_id / f"{topic}-{partition}.sqlite"


def remove_store_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


class AssignedPartition:
    """A partition this worker folds. Its states are read from the worker's cache (a dict
    lookup keeps the fold's hot path fast); a batch reads what the cache lacks from the
    store beforehand (``preload``), so ``stored_of`` reaches SQLite only for a record
    whose key is not its order id."""

    def __init__(self, number: int, path: Path, cache: StateCache) -> None:
        self.number = number
        self.path = path
        self.store = PartitionStore(path)
        self.phase = Phase.RESTORING
        self.assigned_at = time.time()
        self.restored_records = 0
        self.restore_seconds: float | None = None
        self.restored_newest = -1  # the highest source offset of the rows restored
        self.consumed: int | None = None  # next offset to fold, once processing has started
        self.read_to_end_at: float | None = None  # time.monotonic()
        self._cache = cache
        self.states = cache.partition(number)
        # Orders the last preload found in neither the cache nor the store: new ones.
        self._absent: set[str] = set()
        # Whether the store keeps the history, and how far its rebuild got (None: none).
        self.history = False
        self.rebuild: RebuildProgress | None = None

    def stored_of(self, order_id: str) -> Stored | None:
        stored = self.states.get(order_id)
        if stored is None:
            if order_id in self._absent:
                return None
            row = self.store.get(order_id)
            if row is None:
                return None
            self._cache.misses += 1
            stored = self.states[order_id] = Stored(decode_state(row[0]), row[1])
        return stored

    def preload(self, order_ids: set[str]) -> None:
        """Read the states of ``order_ids`` the cache lacks, in one query."""
        states = self.states
        missing = [order_id for order_id in order_ids if order_id not in states]
        self._cache.hits += len(order_ids) - len(missing)
        self._cache.misses += len(missing)
        absent = set(missing)
        for order_id, state, source_offset in self.store.get_many(missing):
            states[order_id] = Stored(decode_state(state), source_offset)
            absent.discard(order_id)
        self._absent = absent

    def wipe(self) -> None:
        """Drop the local files: they belong to another history of the topics."""
        self.store.close()
        remove_store_files(self.path)
        self.store = PartitionStore(self.path)  # a new file, of a new generation
        self.states.clear()

    def close(self) -> None:
        self.store.close()
        self._cache.drop_partition(self.number)
