"""Finding flow-run processes and containers a previous instance of a runner left behind.

Processes: Linux only (it reads ``/proc``): a process whose environment names
the run (``SLUICE_FLOW_RUN_ID``) and this runner's name belongs to that run.
Other systems find nothing, and the run is still reported. Containers: by the
runner-name label their flow runner gave them (:func:`containers_left`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
from collections.abc import Iterable
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


async def containers_left(runner: str, flow_runners: Iterable[object]) -> dict[str, list[str]]:
    """Stop and remove the containers a previous instance of ``runner`` left.

    ``flow_runners`` are the runner's default and those of the deployments it
    knows; each container flow runner among them (one per engine) looks for
    containers labelled with ``runner``'s name, and so does the default engine
    when the ``docker`` package is installed (a run the watcher already marked
    Crashed names no deployment here, but its container may still run).
    Returns ``{run id: [idents]}``. Containers have no parent to die with, so
    this sweep is what stops them after a runner was killed without a chance to.
    """
    found: dict[str, list[str]] = {}
    seen: set[object] = set()
    if importlib.util.find_spec("docker") is not None:
        from engine.runner._docker import DockerFlowRunner

        # Quietly: most machines with the package installed run no Docker deployments.
        for run_id, idents in (await DockerFlowRunner().stop_leftovers(runner, quiet=True)).items():
            found.setdefault(run_id, []).extend(idents)
        seen.add(None)
    for flow_runner in flow_runners:
        sweep = getattr(flow_runner, "stop_leftovers", None)
        where = getattr(flow_runner, "docker_host", None)
        if sweep is None or where in seen:
            continue
        seen.add(where)
        for run_id, idents in (await sweep(runner)).items():
            found.setdefault(run_id, []).extend(idents)
    return found
