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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphans_of(runner: str) -> list[int]:
    """Flow-run processes (and standbys) of ``runner`` whose runner process is gone.

    They outlived a runner killed without a chance to stop them, which the
    parent-death signal normally prevents — unless the process ignores
    SIGTERM. Whatever their run's state is now, nobody will ever wait for them.
    """
    found = []
    name = f"SLUICE_RUNNER_NAME={runner}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            env = (entry / "environ").read_bytes().split(b"\0")
            if name not in env:
                continue
            parent = next((v for v in env if v.startswith(b"SLUICE_RUNNER_PID=")), None)
            if parent is None:
                continue  # not started by a runner (the runner itself, its fork server)
            pid = int(parent.split(b"=", 1)[1])
            if pid != os.getpid() and not _alive(pid):
                found.append(int(entry.name))
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL the process group a leftover leads (or the process alone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
