"""One assigned partition: its store, the rows it has in memory, and where it stands."""

from __future__ import annotations

import enum
import logging
from pathlib import Path

from es_orders.codec import decode_state
from es_orders.projection import Stored
from es_orders.runtime.store import PartitionStore, StoreReader

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
    """A partition this instance folds. Rows read once stay in memory: the fold of a batch
    needs the current state of each order it touches, and a dict lookup is what keeps the
    hot path fast; SQLite is written once per batch and read only on a miss."""

    def __init__(self, number: int, path: Path) -> None:
        self.number = number
        self.path = path
        self.store = PartitionStore(path)
        self.reader = StoreReader(path)
        self.phase = Phase.RESTORING
        self.restored_records = 0
        self.consumed: int | None = None  # next offset to fold, once processing has started
        self._rows: dict[str, Stored] = {}

    def stored_of(self, order_id: str) -> Stored | None:
        stored = self._rows.get(order_id)
        if stored is None:
            row = self.store.get(order_id)
            if row is None:
                return None
            stored = Stored(decode_state(row[0]), row[1])
            self._rows[order_id] = stored
        return stored

    def remember(self, order_id: str, stored: Stored) -> None:
        self._rows[order_id] = stored

    def wipe(self) -> None:
        """Drop the local files: they belong to another history of the topics."""
        self.store.close()
        remove_store_files(self.path)
        self.store = PartitionStore(self.path)
        self.reader = StoreReader(self.path)  # connections to the removed file would go stale
        self._rows.clear()

    def close(self) -> None:
        self.store.close()
        self._rows.clear()
