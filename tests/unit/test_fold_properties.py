"""Properties of the fold: decide and evolve agree, and replay changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count

from hypothesis import given
from hypothesis import strategies as st

from es_orders.domain import (
    CancelOrder,
    ChangePrice,
    ChangeProduct,
    ChangeQuantity,
    Command,
    CreateOrder,
    DomainError,
    Event,
    OrderState,
    fold,
)
from es_orders.domain import decide as decide_

NOW = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)

prices = st.integers(min_value=-2, max_value=50)
quantities = st.integers(min_value=-1, max_value=50)
products = st.sampled_from(["", "p1", "p2", "p3"])
versions = st.none() | st.integers(min_value=0, max_value=8)
order_ids = st.sampled_from(["1", "2"])

commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(CreateOrder, order_ids, st.just("u"), products, quantities, prices),
    st.builds(ChangePrice, order_ids, prices, versions),
    st.builds(ChangeQuantity, order_ids, quantities, versions),
    st.builds(ChangeProduct, order_ids, products, versions),
    st.builds(CancelOrder, order_ids, st.sampled_from(["", "why"]), versions),
)


def run(commands: list[Command]) -> tuple[list[Event], dict[str, OrderState]]:
    """Decide each command against the state the log folds to so far."""
    ids = count()
    log: list[Event] = []
    states: dict[str, OrderState] = {}
    for command in commands:
        try:
            events = decide_(
                command, states.get(command.order_id), now=NOW, new_event_id=lambda: f"{next(ids)}"
            )
        except DomainError:
            continue
        for event in events:
            log.append(event)
            state = fold([event], states.get(event.order_id)).state
            assert state is not None
            states[event.order_id] = state
    return log, states


def fold_log(log: list[Event]) -> dict[str, OrderState]:
    result: dict[str, OrderState] = {}
    for oid in {e.order_id for e in log}:
        folded = fold(e for e in log if e.order_id == oid)
        assert folded.duplicates == folded.gaps == 0
        assert folded.state is not None
        result[oid] = folded.state
    return result


@given(st.lists(commands, max_size=40))
def test_the_fold_of_decided_events_is_the_state_decide_saw(cmds: list[Command]) -> None:
    log, states = run(cmds)
    assert fold_log(log) == states
    for oid, state in states.items():
        assert state.version == sum(1 for e in log if e.order_id == oid)


@given(st.lists(commands, max_size=40), st.data())
def test_replaying_any_prefix_changes_nothing(cmds: list[Command], data: st.DataObject) -> None:
    log, states = run(cmds)
    cut = data.draw(st.integers(min_value=0, max_value=len(log)))
    replayed = log + log[:cut]
    for oid, state in states.items():
        folded = fold(e for e in replayed if e.order_id == oid)
        assert folded.state == state
        assert folded.duplicates == sum(1 for e in log[:cut] if e.order_id == oid)
