"""The local state store of one partition: a SQLite file of order rows and positions.

Each row keeps the state JSON (as the codec wrote it) and the offset of the last event
folded into it; ``meta`` keeps the partition's consumed position and how far the
changelog has been read; ``origin`` says which cluster, topics and partition those
positions belong to, since an offset means nothing in another history of the topics.
A checkpoint writes rows and positions in one transaction, so a
reader (WAL mode, its own connection) never sees half a batch and a crash leaves either
the old checkpoint or the new one.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from es_orders.errors import EsOrdersError

log = logging.getLogger(__name__)

Row = tuple[str, bytes, int]  # order id, state JSON, source offset

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    state BLOB NOT NULL,
    source_offset INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS origin (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""
# Restore keeps, per key, the row with the highest source offset (docs/architecture.md,
# "Exactly-once state without broker transactions").
_UPSERT_NEWER = """
INSERT INTO orders (id, state, source_offset) VALUES (?, ?, ?)
ON CONFLICT (id) DO UPDATE SET state = excluded.state, source_offset = excluded.source_offset
WHERE excluded.source_offset > orders.source_offset
"""
_SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
_SELECT_MANY = """
SELECT id, state, source_offset FROM orders WHERE id IN (SELECT value FROM json_each(?))
"""
CONSUMED = "consumed"
CHANGELOG = "changelog"
# A random number drawn when the file is created. A reader is told which generation the
# worker folding the partition holds open and reads no other: a file deleted and created
# again (``AssignedPartition.wipe``) is never mistaken for the one it replaced.
GENERATION = "generation"


class StoreError(EsOrdersError):
    """The local state store could not be opened, read or written."""


@dataclass(frozen=True, slots=True)
class StorePosition:
    consumed: int | None  # next offset of the events partition to fold; None: never checkpointed
    changelog: int  # next offset of the changelog partition to restore from


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    # WAL: readers never block the writer and see only committed checkpoints. NORMAL
    # sync survives a killed process (not a power cut), which is what the checkpoint
    # invariants need: the changelog, not the local file, is the durable copy.
    if not readonly:
        # For a new file only, and before WAL is set (an existing file keeps its page
        # size). Rows are ~250 bytes, and a WITHOUT ROWID table wants 20 rows or more a
        # page; measured, 16 KiB pages wrote a batch's rows 10% faster than 4 KiB ones.
        connection.execute("PRAGMA page_size=16384")
        connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


class PartitionStore:
    """The writer's handle on one partition's store. Used by the processing thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _connect(path)
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                (GENERATION, random.getrandbits(62)),
            )
            generation = _generation(self._db)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open state store {path}: {exc}") from exc
        assert generation is not None  # inserted above if missing
        self.generation = generation

    def position(self) -> StorePosition:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        return StorePosition(consumed=meta.get(CONSUMED), changelog=meta.get(CHANGELOG, 0))

    def origin(self) -> dict[str, str]:
        """Which cluster, topics and partition the positions belong to (empty: not recorded)."""
        return dict(self._db.execute("SELECT key, value FROM origin").fetchall())

    def set_origin(self, origin: dict[str, str]) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM origin")
            db.executemany("INSERT INTO origin (key, value) VALUES (?, ?)", origin.items())

    def get(self, order_id: str) -> tuple[bytes, int] | None:
        row = self._db.execute(
            "SELECT state, source_offset FROM orders WHERE id = ?", (order_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def get_many(self, order_ids: list[str]) -> list[Row]:
        """The rows of those of ``order_ids`` the store has, in one query."""
        if not order_ids:
            return []
        cursor = self._db.execute(_SELECT_MANY, (json.dumps(order_ids),))
        return cursor.fetchall()

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM orders").fetchone()[0])

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write state store {self.path}: {exc}") from exc

    def restore(self, rows: Iterable[Row], changelog_next: int) -> None:
        """Apply changelog rows (newest source offset wins) and remember how far it was read."""
        with self._transaction() as db:
            db.executemany(_UPSERT_NEWER, rows)
            db.execute(_SET_META, (CHANGELOG, changelog_next))

    def checkpoint(self, rows: Iterable[Row], consumed: int, changelog_next: int | None) -> None:
        """Write a folded batch: its rows, the consumed position, the changelog position."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO orders (id, state, source_offset) VALUES (?, ?, ?)", rows
            )
            db.execute(_SET_META, (CONSUMED, consumed))
            if changelog_next is not None:
                db.execute(_SET_META, (CHANGELOG, changelog_next))

    def close(self) -> None:
        self._db.close()


def _generation(db: sqlite3.Connection) -> int | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (GENERATION,)).fetchone()
    return None if row is None else int(row[0])


class StoreGoneError(StoreError):
    """The store file is not the generation the reader was told about (or not there)."""


class StoreReader:
    """Read-only access for HTTP threads: each thread keeps its own connection (opening
    one costs more than the read), and never shares it with another thread.

    A connection is kept only if the file it opened is ``generation``: a store being
    deleted and created again by a worker raises
    ``StoreGoneError`` instead of answering from an empty new file.
    """

    def __init__(self, path: Path, generation: int) -> None:
        self.path = path
        self.generation = generation
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = _connect(self.path, readonly=True)
                found = _generation(db)
            except sqlite3.Error as exc:
                raise StoreGoneError(f"cannot open state store {self.path}: {exc}") from exc
            if found != self.generation:
                db.close()
                raise StoreGoneError(
                    f"state store {self.path} is generation {found}, not {self.generation}"
                )
            self._local.db = db
        return db

    def _query(self, sql: str, parameters: tuple[object, ...]) -> list[Any]:
        db = self._db()
        try:
            return db.execute(sql, parameters).fetchall()
        except sqlite3.Error as exc:
            # Whatever went wrong with this connection, the next read opens a new one.
            self._local.db = None
            db.close()
            raise StoreGoneError(f"cannot read state store {self.path}: {exc}") from exc

    def get(self, order_id: str) -> bytes | None:
        rows = self._query("SELECT state FROM orders WHERE id = ?", (order_id,))
        return bytes(rows[0][0]) if rows else None

    def page(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        rows = self._query(
            "SELECT id, state FROM orders WHERE id > ? ORDER BY id LIMIT ?",
            (after if after is not None else "", limit),
        )
        return [(order_id, bytes(state)) for order_id, state in rows]
