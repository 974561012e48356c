"""Every golden vector folds, through the codec and the domain, to the expected states."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from es_orders.codec import decode_state, encode_state, state_to_dict
from es_orders.domain import OrderState
from es_orders.projection import fold_record
from tests.vectors import VECTORS_PATH, VectorCase, load_cases, normalize_state

CASES = load_cases()


def test_the_vectors_are_an_identical_copy_of_the_shared_contract() -> None:
    shared = Path(__file__).parents[3] / "shared" / "contract" / "vectors.json"
    if not shared.exists():
        pytest.skip("no ../shared beside this clone")
    assert json.loads(shared.read_text()) == json.loads(VECTORS_PATH.read_text())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_vector_folds_to_expected_states(case: VectorCase) -> None:
    states: dict[str, OrderState] = {}
    dlq = duplicates = gaps = 0
    for record in case.records:
        folded = fold_record(record.key, record.value, record.timestamp_ms, states.get)
        if folded.error is not None:
            dlq += 1
            continue
        assert folded.order_id is not None
        if folded.state is not None:
            states[folded.order_id] = folded.state
        duplicates += folded.duplicates
        gaps += folded.gaps

    actual = {oid: normalize_state(state_to_dict(s)) for oid, s in states.items()}
    expected = {oid: normalize_state(s) for oid, s in case.expected_states.items()}
    assert actual == expected
    assert (dlq, duplicates, gaps) == (case.dlq, case.duplicates, case.gaps)
    for state in states.values():
        assert decode_state(encode_state(state)) == state


def test_there_are_vectors_of_every_kind() -> None:
    assert {c.name for c in CASES} >= {"lifecycle", "duplicate", "gap", "legacy", "poison"}
    assert sum(c.dlq for c in CASES) > 0
