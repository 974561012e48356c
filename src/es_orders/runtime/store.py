"""The local state store of one partition: a SQLite file of order rows and positions.

Each row keeps the state JSON (as the codec wrote it) and the offset of the last event
folded into it; ``meta`` keeps the partition's consumed position and how far the
changelog has been read; ``origin`` says which cluster, topics and partition those
positions belong to, since an offset means nothing in another history of the topics.
A checkpoint writes rows and positions in one transaction, so a
reader (WAL mode, its own connection) never sees half a batch and a crash leaves either
the old checkpoint or the new one.

``history`` keeps every event applied to each order (its wire JSON, partition offset and
record timestamp), written by the same checkpoint transaction as the states: one row per
order and batch, its events packed together (``HistoryBatch``). Two marks in ``meta``
say what it holds (``HistoryMarks``): every event below ``history_rebuilt`` and every
event from ``history_from`` on (up to the consumed position). After a restore from the
changelog (which holds states, not events) the first is behind the second until the
history between them is rebuilt from the events topic (``runtime.history``); absent
while history is off.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec

from es_orders.errors import EsOrdersError

log = logging.getLogger(__name__)

Row = tuple[str, bytes, int]  # order id, state JSON, source offset
# An event as the history gives it back: version, offset, timestamp, wire JSON.
KeptEvent = tuple[int, int, int, bytes]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    state BLOB NOT NULL,
    source_offset INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS origin (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    order_id TEXT NOT NULL,
    first_version INTEGER NOT NULL,
    last_version INTEGER NOT NULL,
    events BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS history_of_order ON history (order_id, first_version, last_version);
"""
# Rows are appended (a new row id is past the last), so a batch fills new pages instead of
# splitting pages all over a table clustered by order: that one wrote a 16 KiB page for
# nearly every order of a batch over many orders. Only the index, a few dozen bytes an
# entry, is written all over. A rebuild may write events the fold wrote too, in other
# packs: readers take each version once.
_INSERT_HISTORY = (
    "INSERT INTO history (order_id, first_version, last_version, events) VALUES (?, ?, ?, ?)"
)
_SELECT_HISTORY = """
SELECT events FROM history WHERE order_id = ? AND last_version > ? ORDER BY first_version
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
HISTORY_FROM = "history_from"
HISTORY_REBUILT = "history_rebuilt"


@dataclass(frozen=True, slots=True)
class HistoryMarks:
    """What a store's history holds: every event below ``rebuilt`` and from ``since`` on."""

    rebuilt: int
    since: int

    @property
    def complete(self) -> bool:
        return self.rebuilt >= self.since


def _marks(rows: list[Any]) -> HistoryMarks | None:
    meta = dict(rows)
    if HISTORY_FROM not in meta:
        return None
    return HistoryMarks(int(meta.get(HISTORY_REBUILT, 0)), int(meta[HISTORY_FROM]))


_SELECT_MARKS = "SELECT key, value FROM meta WHERE key IN (?, ?)"
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


@contextmanager
def _write(db: sqlite3.Connection, path: Path) -> Iterator[sqlite3.Connection]:
    """One write transaction: all of it or, on any error, none of it."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot write state store {path}: {exc}") from exc


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

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return _write(self._db, self.path)

    def restore(self, rows: Iterable[Row], changelog_next: int) -> None:
        """Apply changelog rows (newest source offset wins) and remember how far it was read."""
        with self._transaction() as db:
            db.executemany(_UPSERT_NEWER, rows)
            db.execute(_SET_META, (CHANGELOG, changelog_next))

    def checkpoint(
        self,
        rows: Iterable[Row],
        consumed: int,
        changelog_next: int | None,
        history: HistoryBatch | None = None,
    ) -> None:
        """Write a folded batch: its rows, its events (the order's history), the consumed
        position, the changelog position."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO orders (id, state, source_offset) VALUES (?, ?, ?)", rows
            )
            if history:
                db.executemany(_INSERT_HISTORY, history.packed())
            db.execute(_SET_META, (CONSUMED, consumed))
            if changelog_next is not None:
                db.execute(_SET_META, (CHANGELOG, changelog_next))

    def history_marks(self) -> HistoryMarks | None:
        """What the history holds; None: no history kept (or not since history was off)."""
        return _marks(self._db.execute(_SELECT_MARKS, (HISTORY_FROM, HISTORY_REBUILT)).fetchall())

    def set_history_marks(self, marks: HistoryMarks | None, *, clear: bool = False) -> None:
        """Record what the history holds (None: stop keeping it); ``clear``: first drop
        every event kept (a history with holes that is started afresh)."""
        with self._transaction() as db:
            if clear:
                db.execute("DELETE FROM history")
            if marks is None:
                db.execute("DELETE FROM meta WHERE key IN (?, ?)", (HISTORY_FROM, HISTORY_REBUILT))
            else:
                db.execute(_SET_META, (HISTORY_FROM, marks.since))
                db.execute(_SET_META, (HISTORY_REBUILT, marks.rebuilt))

    def close(self) -> None:
        self._db.close()


class HistoryWriter:
    """The history rebuild's own connection to a partition's store (another thread than
    the fold's: SQLite serializes their transactions, each waiting for the other's)."""

    def __init__(self, path: Path, generation: int) -> None:
        self.path = path
        try:
            self._db = _connect(path)
            self._db.execute("PRAGMA busy_timeout=30000")
            found = _generation(self._db)
        except sqlite3.Error as exc:
            raise StoreGoneError(f"cannot open state store {path}: {exc}") from exc
        if found != generation:
            self._db.close()
            raise StoreGoneError(f"state store {path} is generation {found}, not {generation}")

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return _write(self._db, self.path)

    def add(self, history: HistoryBatch, rebuilt: int) -> None:
        """Keep a rebuilt batch's events, and that every event below ``rebuilt`` is kept
        now (in one transaction: a rebuild stopped anywhere resumes from there)."""
        packed = history.packed()
        with self._transaction() as db:
            db.executemany(_INSERT_HISTORY, packed)
            db.execute(
                "UPDATE meta SET value = max(value, ?) WHERE key = ?", (rebuilt, HISTORY_REBUILT)
            )

    def events(self, order_id: str) -> Iterator[KeptEvent]:
        """The order's events kept so far, in version order (to fold the state a rebuild
        resumes from)."""
        return _each_version(self._db.execute(_SELECT_HISTORY, (order_id, 0)).fetchall(), 0)

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

    def history_marks(self) -> HistoryMarks | None:
        """What the history holds; None: no history kept."""
        return _marks(self._query(_SELECT_MARKS, (HISTORY_FROM, HISTORY_REBUILT)))

    def _kept(self, order_id: str, after_version: int) -> Iterator[KeptEvent]:
        """The order's events after ``after_version`` in version order, each once."""
        return _each_version(self._query(_SELECT_HISTORY, (order_id, after_version)), after_version)

    def events(self, order_id: str, after_version: int, limit: int) -> list[KeptEvent]:
        """Up to ``limit`` of the order's events after ``after_version``, in version order:
        (version, offset, timestamp in Unix ms, wire JSON)."""
        return list(islice(self._kept(order_id, after_version), limit))

    def events_until(
        self, order_id: str, *, version: int | None = None, timestamp: int | None = None
    ) -> list[bytes]:
        """The order's events (wire JSON) in version order: up to ``version``, or those
        before its first event recorded after ``timestamp`` (Unix ms). The first event
        after the instant ends the prefix: a later version with an earlier timestamp (a
        producer's clock behind) was not part of the state as of then."""
        events = []
        for kept_version, _, kept_at, event in self._kept(order_id, 0):
            if (version is not None and kept_version > version) or (
                timestamp is not None and kept_at > timestamp
            ):
                break
            events.append(event)
        return events


# Packed: a row per event costs the fold some 7 us an event on this kind of machine (the
# per-row work of the sqlite3 module and of SQLite's B-tree), a row per order and batch
# a fraction of that when orders have many events. A long pack is compressed (zlib,
# fastest level): events of one order repeat most of their bytes, and a tenth of them is
# written. A short one is not: zlib's setup costs more than the bytes it would save.
_COMPRESS_FROM = 4096
_packed_decoder = msgspec.json.Decoder(list[tuple[int, int, int, msgspec.Raw]])


# One event of a pack: [version, offset, timestamp, wire JSON]. The fold formats it as it
# applies the event (``HistoryBatch.items``), inlined in its loop.
HISTORY_ITEM = b"[%d,%d,%d,%s]"


class HistoryBatch:
    """The events a batch applied, grouped by order as they come: formatted items, and
    each order's first and last version. Plain dicts of bytes, no object per event: the
    fold adds hundreds of thousands a second."""

    def __init__(self) -> None:
        self.items: dict[str, list[bytes]] = {}
        self.first: dict[str, int] = {}
        self.last: dict[str, int] = {}

    def add(self, order_id: str, version: int, offset: int, timestamp: int, event: bytes) -> None:
        """What the fold's loop does inline."""
        item = HISTORY_ITEM % (version, offset, timestamp, event)
        items = self.items.get(order_id)
        if items is None:
            self.items[order_id] = [item]
            self.first[order_id] = version
        else:
            items.append(item)
        self.last[order_id] = version

    def __len__(self) -> int:
        return len(self.items)

    def packed(self) -> list[tuple[str, int, int, bytes]]:
        """One row per order: (order id, first version, last version, its events)."""
        first, last = self.first, self.last
        packed = []
        for order_id, items in self.items.items():
            blob = b"[" + b",".join(items) + b"]"
            if len(blob) >= _COMPRESS_FROM:
                blob = zlib.compress(blob, 1)
            packed.append((order_id, first[order_id], last[order_id], blob))
        packed.sort()  # in index order: its B-tree is written page by page
        return packed


def _each_version(packs: list[Any], after_version: int) -> Iterator[KeptEvent]:
    """The events of ``packs`` (in first-version order) after ``after_version``, each
    version once: a rebuild and the fold may both have kept an event, in other packs."""
    last = after_version
    for (blob,) in packs:
        for event in _unpack(blob):
            if event[0] > last:
                last = event[0]
                yield event


def _unpack(blob: bytes) -> list[KeptEvent]:
    if not blob.startswith(b"["):  # compressed: a zlib stream starts with 0x78
        blob = zlib.decompress(blob)
    return [(v, o, t, bytes(e)) for v, o, t, e in _packed_decoder.decode(blob)]
