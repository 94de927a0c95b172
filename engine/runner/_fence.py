"""Fencing: a run's body stops before the lease that covers it can lapse.

The rule (docs/reliability.md, "Leases fence"): a lease of ``L`` seconds,
renewed by a request sent at ``t`` (the holder's monotonic clock), cannot
lapse on the server before ``t + L``, because the server stamps it later
than ``t``. The holder therefore treats it as ending at ``t + L - margin``
(:func:`margin`, a quarter of the lease) and makes sure that no body of
its runs executes past that point. Only then may a slot or a run be given to
someone else: a slot lease or a runner's heartbeat expires on the server no
earlier than ``t + L``.

Two parties enforce it, so that either is enough:

* the runner (:class:`Fence`, used by :mod:`engine.runner._upkeep`) kills the
  process of a run whose deadline passed;
* the run's process (:func:`watch_lease`) ends itself, whole process group,
  when the deadline its runner last wrote to its *lease file* passes: this
  covers a runner that is frozen (SIGSTOP, a long GC pause) or cut off.

The lease file (``SLUICE_LEASE_FILE``) holds one number, the deadline on
``CLOCK_MONOTONIC``, which every process on one host shares. It is rewritten
atomically (write, then rename) after each renewal. A file, not a NATS
subscription: the process needs no connection of its own to be fenced, and
a fork server's or standby pool's children get it through their environment
like everything else.

This module imports only the standard library: the run's process loads it
before anything else.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

LEASE_FILE_ENV = "SLUICE_LEASE_FILE"

#: Longest the process's watchdog sleeps between two reads of its lease file.
WATCH_PERIOD = 0.5


def margin(lease: float) -> float:
    """Seconds a holder keeps between its fencing deadline and the lease's end.

    It absorbs the watchdog's wake-up delay on a loaded host, the time a kill
    takes, and clock drift between host and server over one lease (bounded
    drift, far below 1 %). A quarter of the lease: 2.5 s of a 10 s lease.
    """
    return lease / 4


class Fence:
    """The runner's side: when does each of its runs have to stop?

    ``renewed`` records an acknowledged heartbeat, ``claimed`` a claim that
    took a slot lease. A run's deadline is the earlier of the runner's lease
    (the watcher declares runners lost by it) and its slot lease, less the
    margin. Times are ``clock()`` readings (monotonic).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.until = -math.inf
        """The runner's lease end (no margin): latest acknowledged send + lease."""
        self.margin = 0.0
        self._slots: dict[str, float] = {}
        #: Runs whose deadline passed: no later renewal revives them.
        self._dead: set[str] = set()
        self._files: dict[str, Path] = {}
        self._folder: Path | None = None

    def holds(self) -> bool:
        """May a new claim be taken? Only under a lease with time to run."""
        return self.clock() < self.until - self.margin

    def renewed(self, sent: float, lease: float, runs: Iterable[str]) -> None:
        """A heartbeat sent at ``sent`` naming ``runs`` was answered: ``lease`` s.

        A run whose deadline has passed stays fenced: its slot may have lapsed
        on the server meanwhile, and someone else may hold it now.
        """
        now = self.clock()
        self._dead.update(r for r in self._slots if now >= self.deadline(r))
        self.until = max(self.until, sent + lease)
        self.margin = margin(lease)
        for run_id in runs:
            if run_id in self._slots:
                self._slots[run_id] = max(self._slots[run_id], sent + lease)
        for run_id in list(self._files):
            self._write(run_id)

    def claimed(self, run_id: str, sent: float, slot_lease: float | None) -> None:
        """A claim sent at ``sent`` was accepted, taking a slot of ``slot_lease`` s."""
        self._slots[run_id] = math.inf if slot_lease is None else sent + slot_lease
        self._dead.discard(run_id)

    def deadline(self, run_id: str) -> float:
        """When the body of ``run_id`` must have stopped."""
        if run_id in self._dead:
            return -math.inf
        return min(self.until, self._slots.get(run_id, math.inf)) - self.margin

    def expired(self, run_id: str) -> bool:
        return self.clock() >= self.deadline(run_id)

    def lease_file(self, run_id: str) -> Path:
        """Create the run's lease file (with its deadline now) for its process."""
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="sluice-leases-"))
        self._files[run_id] = self._folder / run_id
        self._write(run_id)
        return self._files[run_id]

    def forget(self, run_id: str) -> None:
        self._slots.pop(run_id, None)
        self._dead.discard(run_id)
        path = self._files.pop(run_id, None)
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()
        if not self._files:
            self.close()  # no folder left behind by a runner that is never closed

    def close(self) -> None:
        folder, self._folder = self._folder, None
        self._files.clear()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _write(self, run_id: str) -> None:
        path = self._files[run_id]
        deadline = self.deadline(run_id)
        text = repr(deadline) if math.isfinite(deadline) else "-inf"
        temp = path.with_name(f".{path.name}.tmp")
        with contextlib.suppress(OSError):
            temp.write_text(text)
            os.replace(temp, path)  # a reader sees the old number or the new, never half


# --- the run's process ------------------------------------------------------------------
def read_deadline(path: str) -> float | None:
    """The deadline in a lease file; None if it cannot be read."""
    try:
        with open(path) as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return None


def lapsed(deadline: float | None, now: float) -> str | None:
    """Why a lease whose file read ``deadline`` (None: unreadable) is lost at
    ``now``; None while it holds. Said alike by a run's watchdog and a fork server."""
    if deadline is None:
        return "its lease file is gone"
    if now >= deadline:
        return "no renewal came in time"
    return None


def fence_now(reason: str) -> None:
    """End this process and its process group at once (SIGKILL): no cleanup,
    because cleanup is user code, and user code must not run past the deadline."""
    with contextlib.suppress(Exception):
        sys.stderr.write(f"sluice: {reason}; stopping this flow-run process\n")
        sys.stderr.flush()
    if os.getpgrp() == os.getpid():  # started by a runner: we lead our own group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(path: str) -> None:
    while True:
        deadline = read_deadline(path)
        now = time.monotonic()
        late = lapsed(deadline, now)
        if late is not None:
            fence_now(f"the run's lease was lost ({late})")
            return
        assert deadline is not None
        time.sleep(min(deadline - now, WATCH_PERIOD))


def watch_lease(environ: dict[str, str] | None = None) -> bool:
    """In a run's process: end it when its runner stops renewing its lease.

    Reads ``SLUICE_LEASE_FILE``. Without it (a process started by hand), or
    when the file is not on this host's file system (a container that was
    not given it), nothing is watched and False is returned: such runs are
    fenced by their runner alone.
    """
    path = (os.environ if environ is None else environ).get(LEASE_FILE_ENV)
    if not path:
        return False
    if read_deadline(path) is None:
        sys.stderr.write(f"sluice: lease file {path} cannot be read; not self-fencing\n")
        return False
    threading.Thread(target=_watch, args=(path,), name="sluice-lease", daemon=True).start()
    return True
