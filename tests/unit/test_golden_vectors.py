"""Every golden vector folds, through the codec and the domain, to the expected states."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from es_orders.codec import decode_state, encode_state, state_to_dict
from es_orders.projection import Stored, fold_record
from tests.vectors import VECTORS_PATH, VectorCase, load_cases, normalize_state

CASES = load_cases()


def fold_vector(
    case: VectorCase, replay_from: int | None
) -> tuple[dict[str, Stored], int, int, int]:
    """Fold a case's records at offsets 0.., then again from ``replay_from`` (a crash replay)."""
    stored: dict[str, Stored] = {}
    dlq = duplicates = gaps = 0
    offsets = list(enumerate(case.records))
    if replay_from is not None:
        offsets += offsets[replay_from:]
    for offset, record in offsets:
        folded = fold_record(record.key, record.value, record.timestamp_ms, offset, stored.get)
        if folded.error is not None:
            dlq += 1
            continue
        assert folded.order_id is not None
        if folded.stored is not None:
            stored[folded.order_id] = folded.stored
        duplicates += folded.duplicates
        gaps += folded.gaps
    return stored, dlq, duplicates, gaps


def test_the_vectors_are_an_identical_copy_of_the_shared_contract() -> None:
    shared = Path(__file__).parents[3] / "shared" / "contract" / "vectors.json"
    if not shared.exists():
        pytest.skip("no ../shared beside this clone")
    assert json.loads(shared.read_text()) == json.loads(VECTORS_PATH.read_text())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_vector_folds_to_expected_states(case: VectorCase) -> None:
    stored, dlq, duplicates, gaps = fold_vector(case, replay_from=None)
    states = {oid: s.state for oid, s in stored.items()}

    actual = {oid: normalize_state(state_to_dict(s)) for oid, s in states.items()}
    expected = {oid: normalize_state(s) for oid, s in case.expected_states.items()}
    assert actual == expected
    assert (dlq, duplicates, gaps) == (case.dlq, case.duplicates, case.gaps)
    for state in states.values():
        assert decode_state(encode_state(state)) == state


def test_there_are_vectors_of_every_kind() -> None:
    assert {c.name for c in CASES} >= {"lifecycle", "duplicate", "gap", "legacy", "poison"}
    assert sum(c.dlq for c in CASES) > 0


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replaying_records_already_folded_changes_nothing(case: VectorCase) -> None:
    once = fold_vector(case, replay_from=None)
    for start in range(len(case.records)):
        stored, _, _, gaps = fold_vector(case, replay_from=start)
        assert stored == once[0]
        assert gaps == once[3]  # an applied gap is skipped by its offset on replay
