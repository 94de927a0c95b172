"""Sluice services as real processes, to kill, stop and restart in fault tests.

Every process starts in a session of its own, so a signal meant for one
reaches that one only (its flow-run children are in sessions of their own
too, as the runner starts them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import nats
import nats.js.errors

from engine.client import Client
from shared import names
from shared.connection import connect
from shared.errors import SluiceError, StackUnavailable
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import StateType

from .._procs import service_env
from ._bodies import check_bodies, read_journal
from ._checker import Report, check, collect, leftover_processes
from ._history import History

ROOT = Path(__file__).resolve().parents[2]
RUNNER_MAIN = Path(__file__).with_name("_runner_main.py")

#: Short leases so that faults resolve in seconds: a runner is lost after
#: two missed heartbeats (1 s), a fresh slot lasts 2 s before its first renewal.
FAST = {
    "SLUICE_HEARTBEAT_INTERVAL": "0.5",
    "SLUICE_SLOT_LEASE": "2",
    "SLUICE_REQUEST_TIMEOUT": "2",
    "PYTHONPATH": str(ROOT),
}


def fast_settings(url: str, home: Path, **kw: object) -> Settings:
    values: dict[str, object] = dict(
        nats_url=url, home=home, heartbeat_interval=0.5, slot_lease=2.0, request_timeout=2.0
    )
    values.update(kw)
    return Settings(**values)  # type: ignore[arg-type]


class Proc:
    """One service process; ``start`` again after a kill to restart it."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=ROOT,
            )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, the crash case; waits until it is gone."""
        if self.popen is not None and self.alive():
            self.popen.kill()
            self.popen.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (after SIGCONT, in case it was stopped), then SIGKILL after ``timeout``."""
        if self.popen is None or not self.alive():
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Stack:
    """Processes of one fault test, all stopped at the end (see the ``stack`` fixture)."""

    def __init__(self, settings: Settings, logs: Path, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.logs = logs
        self.env = service_env(settings) | FAST | (env or {})
        self.procs: list[Proc] = []

    def service(self, module: str, *args: str, name: str | None = None) -> Proc:
        log = self.logs / f"{name or module}.log"
        proc = Proc([sys.executable, "-m", module, *args], self.env, log).start()
        self.procs.append(proc)
        return proc

    def runner(self, name: str, deployment_id: str, limit: int = 5, **env: str) -> Proc:
        """A runner process serving one deployment with the stand-in flow process."""
        log = self.logs / f"runner-{name}.log"
        args = [sys.executable, str(RUNNER_MAIN), name, deployment_id, str(limit)]
        proc = Proc(args, self.env | env, log).start()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    async def orchestrator(self, name: str = "orchestrator") -> Proc:
        proc = self.service("services.orchestrator", name=name)
        await wait_serving(self.settings, proc)
        return proc


async def wait_serving(settings: Settings, proc: Proc, timeout: float = 60.0) -> None:
    """Return once an orchestrator answers a request (no fixed sleeps)."""
    with anyio.fail_after(timeout):
        while True:
            if not proc.alive():
                raise RuntimeError(f"service exited:\n{proc.tail()}")
            try:
                async with Client(settings, connect_timeout=2) as c:
                    await c.list_deployments(limit=1)
                    return
            except StackUnavailable:
                await anyio.sleep(0.1)


async def wait_heartbeat(settings: Settings, runner: str, proc: Proc, timeout: float = 60) -> None:
    """Return once a runner's heartbeat is stored: it is connected and serving."""
    with anyio.fail_after(timeout):
        nc = await nats.connect(settings.nats_url)
        try:
            kv = await nc.jetstream().key_value(names.HEARTBEATS_BUCKET)
            while True:
                if not proc.alive():
                    raise RuntimeError(f"runner {runner} exited:\n{proc.tail()}")
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    if (await kv.get(runner)).value:
                        return
                await anyio.sleep(0.1)
        finally:
            await nc.close()


async def until(c: Client, run_id: str, *types: StateType, timeout: float = 60) -> FlowRun:
    """The run once it reaches one of ``types`` (followed through its events)."""
    with anyio.fail_after(timeout):
        async with contextlib.aclosing(c.watch_flow_run(run_id, resync=1.0)) as runs:
            async for run in runs:
                if run.state.type in types:
                    return run
    raise AssertionError("unreachable")


async def retry(fn, *, pause: float = 0.2, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    """Call ``fn`` until the stack answers it (StackUnavailable is retried)."""
    with anyio.fail_after(timeout):
        while True:
            try:
                return await fn()
            except StackUnavailable:
                await anyio.sleep(pause)


async def verify(
    settings: Settings,
    history: History,
    deployment_ids: list[str],
    *,
    finished: bool = True,
    timeout: float = 90.0,
    seed: int | None = None,
    journal: Path | None = None,
) -> Report:
    """Wait until the invariants hold (or ``timeout``), then return the checker's report.

    ``journal``: the flow bodies' journal; the body invariants
    (``tests.faults._bodies``) are checked on it too.

    Waiting is needed because some repairs are asynchronous by design: a
    slot is freed when its lease runs out, a missing event is published by
    recovery. ``finished``: also wait for every run to reach a terminal state.
    """
    deadline = time.monotonic() + timeout
    nc = await connect(settings, name="sluice-checker")
    try:
        while True:
            problems: list[str] = []
            try:
                snap = await collect(nc, deployment_ids)
            except (nats.errors.Error, TimeoutError, SluiceError) as exc:
                problems.append(f"could not read the stack: {exc!r}")
            else:
                report = check(history, snap, running_states_limit=journal is None)
                if journal is not None:
                    report.violations += check_bodies(read_journal(journal), snap, report)
                problems += report.violations
                left = leftover_processes(snap.runs)
                problems += [f"process {pid} of run {run} left behind" for pid, run in left.items()]
                if finished:
                    problems += [
                        f"run {r.id} not finished: {r.state.describe()}"
                        for r in snap.runs.values()
                        if not r.state.is_terminal
                    ]
                if not problems:
                    print(
                        f"checked {report.runs} runs, {report.events} events, {report.gaps} gaps, "
                        f"{report.bodies} bodies (max at once {report.max_bodies}); "
                        f"ops {history.summary()}; max Running {report.max_running}; seed {seed}"
                    )
                    return report
            if time.monotonic() > deadline:
                shown = "\n  ".join(problems[:40])
                raise AssertionError(
                    f"invariants broken (seed {seed}; replay with SLUICE_TEST_SEED={seed}):\n"
                    f"  {shown}"
                )
            await anyio.sleep(1.0)
    finally:
        await nc.close()
