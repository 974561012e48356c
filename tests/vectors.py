"""The golden vectors of the wire contract, as Kafka records.

The contract: docs/architecture.md, "Event wire format".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

VECTORS_PATH = Path(__file__).parent / "data" / "vectors.json"


@dataclass(frozen=True)
class VectorRecord:
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int


@dataclass(frozen=True)
class VectorCase:
    name: str
    records: list[VectorRecord]
    expected_states: dict[str, dict[str, Any]]
    dlq: int
    duplicates: int
    gaps: int


def _record(raw: dict[str, Any]) -> VectorRecord:
    value = raw["value"]
    encoded = value.encode() if isinstance(value, str) else json.dumps(value).encode()
    key = raw["key"]
    return VectorRecord(
        key=None if key is None else key.encode(),
        value=encoded,
        headers=dict(raw.get("headers") or {}),
        timestamp_ms=int(raw["timestamp_ms"]),
    )


def load_cases() -> list[VectorCase]:
    document = json.loads(VECTORS_PATH.read_text())
    return [
        VectorCase(
            name=case["name"],
            records=[_record(r) for r in case["records"]],
            expected_states=case["expected_states"],
            dlq=case["dlq"],
            duplicates=case["duplicates"],
            gaps=case["gaps"],
        )
        for case in document["cases"]
    ]


def normalize_state(state: dict[str, Any]) -> dict[str, Any]:
    """A state with its timestamps as instants, so that ``...01.000Z`` equals ``...01Z``."""
    out = dict(state)
    for field in ("created_at", "updated_at"):
        out[field] = datetime.fromisoformat(out[field].replace("Z", "+00:00"))
    return out
