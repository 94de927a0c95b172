"""The Sluice/Prefect comparison harness still runs: its Sluice side, cheap scenarios, quick.

Only Sluice's side runs, so the test never creates bench/.prefect-venv or
installs Prefect. No figure is checked against a threshold (shared noisy
machines): the test asserts that every step ran and the report holds samples.
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
            *("--scenarios", "import,tasks", "--output", str(output)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = output.read_text()
    assert "Import the SDK" in report
    assert "no-op tasks in one flow" in report
    assert "Steps that failed" not in report
    assert "Prefect's side was not run" in report
    figures = json.loads(output.with_suffix(".json").read_text())["figures"]
    assert {f["figure"] for f in figures} >= {"import time", "flow of 100 no-op tasks, no server"}
    for figure in figures:
        assert set(figure["samples"]) == {"Sluice"}
        assert all(value > 0 for value in figure["samples"]["Sluice"])
    assert (REPO / "bench" / ".prefect-venv").exists() == venv_before
