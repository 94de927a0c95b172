"""Tie a local flow-run process to the runner that started it.

When a runner dies (SIGKILL, OOM), the processes it started must not run on
unknown: on Linux the kernel sends us SIGTERM when our parent exits
(``PR_SET_PDEATHSIG``), and our handler passes it to our whole process group,
so tasks' own child processes go too. Elsewhere this is a no-op; the
cancellation-watcher still marks the runs Crashed when the runner's
heartbeats stop.

This is for local child processes only. A pid names a process in one pid
namespace, so the lifeline acts only when the runner's namespace
(``SLUICE_RUNNER_PIDNS``) is ours: a process in a container, which the
runner stops through the Docker engine instead, never mistakes its init for a
dead runner, even if ``SLUICE_RUNNER_PID`` reached it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import sys
from types import FrameType

PR_SET_PDEATHSIG = 1
PARENT_ENV = "SLUICE_RUNNER_PID"
NAMESPACE_ENV = "SLUICE_RUNNER_PIDNS"
#: What ties a process to its runner's pid; never passed into a container.
LIFELINE_ENV = (PARENT_ENV, NAMESPACE_ENV)


def pid_namespace() -> str:
    """This process's pid namespace (``pid:[4026531836]``), or "" where there is none to read."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def lifeline_env() -> dict[str, str]:
    """The variables a runner gives a local child so that it ends with the runner."""
    return {PARENT_ENV: str(os.getpid()), NAMESPACE_ENV: pid_namespace()}


def _forward(signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgrp(), signal.SIGTERM)  # ourselves included: default action
    os.kill(os.getpid(), signal.SIGTERM)


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, loaded once (a fork server loads it before it forks)."""
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """If started by a runner in our pid namespace, end with it.

    Does nothing unless both ``SLUICE_RUNNER_PID`` and ``SLUICE_RUNNER_PIDNS``
    are set and the namespace is ours, and nothing for the first process of a
    namespace (pid 1: a container's main process has no parent to follow).
    """
    raw = os.environ.get(PARENT_ENV)
    namespace = os.environ.get(NAMESPACE_ENV)
    if not raw or not namespace or not sys.platform.startswith("linux"):
        return
    if os.getpid() == 1 or namespace != pid_namespace():
        return
    try:
        parent = int(raw)
    except ValueError:
        return
    if libc().prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return
    signal.signal(signal.SIGTERM, _forward)
    if os.getppid() != parent:  # it died before we asked
        _forward()
