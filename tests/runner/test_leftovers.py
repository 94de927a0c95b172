"""Finding the processes a dead runner left: only those whose runner is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from engine.runner._leftovers import orphans_of

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _dead_pid() -> int:
    """The pid of a process that has exited (a shell that printed it)."""
    return int(subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout)


def test_only_processes_of_a_dead_runner_are_orphans() -> None:
    name = f"r-{uuid.uuid4().hex[:8]}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_RUNNER_")}
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    procs = {
        # the runner itself, or its fork server: its name but no runner pid
        "runner": subprocess.Popen(sleep, env={**base, "SLUICE_RUNNER_NAME": name}),
        # started by a live runner (this process)
        "live": subprocess.Popen(
            sleep,
            env={**base, "SLUICE_RUNNER_NAME": name, "SLUICE_RUNNER_PID": str(os.getpid())},
        ),
        # left by a runner that is gone
        "orphan": subprocess.Popen(
            sleep,
            env={**base, "SLUICE_RUNNER_NAME": name, "SLUICE_RUNNER_PID": str(_dead_pid())},
        ),
        # another runner's
        "other": subprocess.Popen(
            sleep,
            env={**base, "SLUICE_RUNNER_NAME": f"{name}-x", "SLUICE_RUNNER_PID": str(_dead_pid())},
        ),
    }
    try:
        assert orphans_of(name) == [procs["orphan"].pid]
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
