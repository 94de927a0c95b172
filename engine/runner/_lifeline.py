"""Tie a flow-run process to the runner that started it.

When a runner dies (SIGKILL, OOM), the processes it started must not run on
unknown: on Linux the kernel sends us SIGTERM when our parent exits
(``PR_SET_PDEATHSIG``), and our handler passes it to our whole process group,
so tasks' own child processes go too. Elsewhere this is a no-op; the
cancellation-watcher still marks the runs Crashed when the runner's
heartbeats stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from types import FrameType

PR_SET_PDEATHSIG = 1
PARENT_ENV = "SLUICE_RUNNER_PID"


def _forward(signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgrp(), signal.SIGTERM)  # ourselves included: default action
    os.kill(os.getpid(), signal.SIGTERM)


def die_with_parent() -> None:
    """If started by a runner (``SLUICE_RUNNER_PID``), end with it."""
    raw = os.environ.get(PARENT_ENV)
    if not raw or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return
    signal.signal(signal.SIGTERM, _forward)
    if os.getppid() != int(raw):  # it died before we asked
        _forward()
