"""Finding flow-run processes a previous instance of a runner left behind.

Linux only (it reads ``/proc``): a process whose environment names the run
(``SLUICE_FLOW_RUN_ID``) and this runner's name belongs to that run. Other
systems find nothing, and the run is still reported.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def processes_of(run_id: str, runner: str) -> list[int]:
    found = []
    want = {f"SLUICE_FLOW_RUN_ID={run_id}".encode(), f"SLUICE_RUNNER_NAME={runner}".encode()}
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            env = set((entry / "environ").read_bytes().split(b"\0"))
            if want <= env:
                found.append(int(entry.name))
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL the process group a leftover leads (or the process alone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
