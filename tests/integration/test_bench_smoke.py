"""``python -m benchmarks --quick`` end to end: every phase runs and reports every figure.

No timing assertions: the figures depend on the machine. What must hold anywhere is
that each measure came out (a positive number), the restarts restored instead of
replaying, no request failed, and the last line is the one scripts grep for.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.context import BenchOptions
from benchmarks.report import figures_for

pytestmark = pytest.mark.integration

LAST_LINE = re.compile(
    r"fold throughput: (\d+) events/s, (\d+\.\d)x quixstreams; (\d+) events/s with (\d+) workers"
)


def test_quick_bench_reports_every_figure_and_the_summary_line(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_ORDERS_")}
    env["PYTHONPATH"] = str(Path(__file__).parents[2])  # the checkout holding benchmarks/
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=280,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]

    document = json.loads(output.read_text())
    figures = document["figures"]
    quick = BenchOptions.quick()
    assert document["error"] is None
    assert sorted(figures) == sorted(f.key for f in figures_for(quick))
    not_positive = {k: v for k, v in figures.items() if not (isinstance(v, int | float) and v > 0)}
    assert not not_positive

    details = document["details"]
    assert figures["restore.cold.restored_records"] == quick.restore_orders
    assert details["restore.cold.consumed"] == 0
    assert details["restore.warm.consumed"] == 0
    for phase in ("latency.by_id", "latency.list", "latency.local", "command.visible"):
        assert details[f"{phase}.errors"] == 0
        assert details[f"{phase}.requests"] > 0
    # Every answer came from the instance meant to give it. Forwarded GETs may time out
    # where forwarding cannot keep up (a figure, not a failure), but some were answered.
    assert details["latency.local.misrouted"] == details["latency.forwarded.misrouted"] == 0
    assert details["latency.forwarded.errors"] < details["latency.forwarded.requests"]

    last = completed.stdout.strip().splitlines()[-1]
    match = LAST_LINE.fullmatch(last)
    assert match is not None, last
    assert int(match.group(1)) == round(figures["fold.narrow.workers_1.events_per_s"])
    assert match.group(2) == f"{figures['fold.narrow.vs_quixstreams']:.1f}"
    many = figures[f"fold.narrow.workers_{quick.workers}.events_per_s"]
    assert (int(match.group(3)), int(match.group(4))) == (round(many), quick.workers)
