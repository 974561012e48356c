"""Fold one Kafka record of the events topic into the state of its order. Pure: no I/O.

This is the step both runtimes (query and command views) and the golden-vector tests
share: decode through the codec, upcast legacy records against the current state, then
``evolve`` each event. A record that cannot be decoded is reported, not raised, so the
caller can send it to the dead letter topic and carry on.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from es_orders.codec import CodecError, LegacyUpdate, decode_record, upcast
from es_orders.domain import Event, OrderState, Outcome, evolve

_DUPLICATE, _GAP = Outcome.DUPLICATE, Outcome.GAP  # class attribute reads are slow in 3.11


class Stored(msgspec.Struct, frozen=True, gc=False):
    """An order's state as a store holds it, with the offset of the last event folded in."""

    state: OrderState
    source_offset: int


class RecordFolded(msgspec.Struct, frozen=True, gc=False):
    """What one record did: the order's new state (None if it has none), and counts."""

    order_id: str | None
    state: OrderState | None
    stored: Stored | None  # the order's new row, when the record changed it
    duplicates: int = 0
    gaps: int = 0
    error: CodecError | None = None
    replayed: bool = False
    # The typed event the record holds (None for a legacy record): whoever waits for an
    # event to be folded knows it by its id, and finds its Idempotency-Key here.
    event: Event | None = None
    # For a legacy record that changed the state: the events it was upcast into that
    # applied, in order (what the order's history keeps of it).
    upcast: tuple[Event, ...] | None = None


def fold_record(
    key: bytes | None,
    value: bytes | None,
    timestamp_ms: int,
    offset: int,
    stored_of: Callable[[str], Stored | None],
) -> RecordFolded:
    """Fold the record at ``offset``; ``stored_of(order_id)`` gives what the store holds.

    A record at or below the row's source offset was folded before (a replay after a
    crash): it changes nothing, and is not counted as a duplicate.
    """
    try:
        decoded = decode_record(key, value, timestamp_ms)
    except CodecError as exc:
        return RecordFolded(None, None, None, error=exc)
    stored = stored_of(decoded.order_id)
    before = None if stored is None else stored.state
    typed = None if isinstance(decoded, LegacyUpdate) else decoded
    if stored is not None and offset <= stored.source_offset:
        return RecordFolded(decoded.order_id, before, None, replayed=True, event=typed)
    events = (typed,) if typed is not None else upcast(decoded, before)  # type: ignore[arg-type]
    applied: list[Event] | None = None if typed is not None else []
    state, duplicates, gaps = before, 0, 0
    for event in events:
        evolved = evolve(state, event)
        if evolved.outcome is _DUPLICATE:
            duplicates += 1
            continue
        gaps += evolved.outcome is _GAP
        state = evolved.state
        if applied is not None:
            applied.append(event)
    stored = None if state is before or state is None else Stored(state, offset)
    # Positional: keyword arguments cost a Struct's construction a third more.
    if applied is None:
        return RecordFolded(decoded.order_id, state, stored, duplicates, gaps, None, False, typed)
    return RecordFolded(
        decoded.order_id, state, stored, duplicates, gaps, None, False, None, tuple(applied)
    )
