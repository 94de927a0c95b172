"""The Sluice/Prefect comparison harness still runs: its Sluice side, every scenario, quick.

Every scenario runs (import, tasks, and the stacks: start, single runs, cancel,
the batch, memory) with the quick plan's small counts, so a change to a helper
the harness calls (as ``bench.runner.batch_runs`` once did) fails here, not on
the next full benchmark. Only Sluice's side runs, so the test never creates
bench/.prefect-venv or installs Prefect. No figure is checked against a
threshold (shared noisy machines): the test asserts that every step ran and
the report holds samples.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_sluice_side_writes_a_report(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    venv_before = (REPO / "bench" / ".prefect-venv").exists()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.compare", "--quick", "--sides", "sluice"),
            *("--output", str(output)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = output.read_text()
    assert "Import the SDK" in report
    assert "no-op tasks in one flow" in report
    assert "Steps that failed" not in report
    assert "Prefect's side was not run" in report
    figures = json.loads(output.with_suffix(".json").read_text())["figures"]
    assert {f["figure"] for f in figures} >= {
        "import time",
        "flow of 100 no-op tasks, no server",
        "flow of 100 no-op tasks, reporting to the stack",
        "launch -> first run Completed",
        "create -> Completed",
        "cancel request -> process gone, run Cancelled",
        "first create -> last end",
        "throughput",
        "RSS summed over the process trees",
    }
    for figure in figures:
        for side, samples in figure["samples"].items():
            assert side.startswith("Sluice"), figure
            assert samples and all(value > 0 for value in samples), figure
    assert (REPO / "bench" / ".prefect-venv").exists() == venv_before
