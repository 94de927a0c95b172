"""Processes started ahead of their run: subprocess standbys and fork-server spares.

A run handed to a standby still runs in a fresh process of its own; a
standby that dies while waiting is replaced without the run noticing; and
when the runner stops, no waiting process is left behind.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

from engine.client import Client
from engine.runner import Runner
from engine.runner._fork import ForkServerFlowRunner, _Forked
from engine.runner._subprocess import FlowRunProcess, SubprocessFlowRunner, _Subprocess
from services.orchestrator import Orchestrator
from shared.models import Deployment, FlowRun
from shared.settings import Settings
from shared.states import StateType

from ._flows import completed_run, deploy_flows
from .test_runner import running
from .test_watcher import alive

pytestmark = pytest.mark.anyio
T = TypeVar("T")

FLOW = """
import os, time
from engine import flow

@flow(name="{name}")
def pid(seconds: float = 0) -> int:
    time.sleep(seconds)
    return os.getpid()
"""


async def _serving(
    client: Client,
    settings: Settings,
    tmp_path: Path,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    flow_runner: SubprocessFlowRunner | ForkServerFlowRunner,
) -> Runner:
    """A runner with ``flow_runner`` serving the pid flow's deployment ``<unique>/d``."""
    await deploy_flows(client, tmp_path, FLOW.format(name=unique), {unique: "pid"})
    monkeypatch.setenv("SLUICE_NATS_URL", settings.nats_url)
    r = Runner(name=f"sb-{unique}", settings=settings, flow_runner=flow_runner)
    await r.aserve_deployment(f"{unique}/d")
    return r


async def _one_run(client: Client, unique: str) -> FlowRun:
    return await completed_run(client, f"{unique}/d")


async def _eventually(check: Callable[[], T]) -> T:
    """``check()`` once it is truthy (polled; the test's timeout bounds it)."""
    with anyio.fail_after(60):
        while True:
            if value := check():
                return value
            await anyio.sleep(0.02)


async def _waiting_standby(flow_runner: SubprocessFlowRunner) -> int:
    """The pid of the standby the pool keeps, once it has started one."""

    def waiting() -> int:
        pool = flow_runner._pool
        return next(iter(pool._waiting.values())).pid if pool and pool._waiting else 0

    return await _eventually(waiting)


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


async def test_runs_are_handed_to_standbys_each_a_process_of_its_own(
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow_runner = SubprocessFlowRunner(standby=1)
    r = await _serving(client, settings, tmp_path, unique, monkeypatch, flow_runner)
    pids, standbys = [], []
    async with running(r):
        pids.append((await _one_run(client, unique)).state.data)
        for _ in range(2):
            standbys.append(await _waiting_standby(flow_runner))
            pids.append((await _one_run(client, unique)).state.data)
        left = await _waiting_standby(flow_runner)
    assert pids[1:] == standbys  # the waiting process took the run
    assert len(set(pids)) == 3 and os.getpid() not in pids
    assert not alive(left)  # stopping the runner ended the standby still waiting


async def test_a_standby_that_died_waiting_is_replaced(
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow_runner = SubprocessFlowRunner(standby=1)
    r = await _serving(client, settings, tmp_path, unique, monkeypatch, flow_runner)
    async with running(r):
        await _one_run(client, unique)
        victim = await _waiting_standby(flow_runner)
        os.killpg(victim, signal.SIGKILL)
        done = await _one_run(client, unique)
    assert done.state.data != victim


@dataclass
class _FirstProcessDies(SubprocessFlowRunner):
    """Each run's first process is SIGKILLed as soon as it is started, before it
    can say a word: as a standby killed (the OOM killer, kill -9) while it waited."""

    killed: dict[str, int] = field(default_factory=dict)

    async def start(
        self, run: FlowRun, deployment: Deployment | None, env: Mapping[str, str]
    ) -> FlowRunProcess:
        process = await super().start(run, deployment, env)
        if run.id not in self.killed:
            assert isinstance(process, _Subprocess)
            self.killed[run.id] = process.process.pid
            os.killpg(process.process.pid, signal.SIGKILL)
            await process.wait()
        return process


async def test_a_process_that_dies_before_it_began_its_run_is_replaced(
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """None of the flow's code ran, so the runner starts the run in a new
    process instead of declaring it Crashed (a second death would)."""
    flow_runner = _FirstProcessDies(standby=0)
    r = await _serving(client, settings, tmp_path, unique, monkeypatch, flow_runner)
    async with running(r):
        done = await _one_run(client, unique)
    assert done.state.data != flow_runner.killed[done.id]
    assert StateType.CRASHED not in {p.state.type for p in done.history}


async def test_fork_spares_take_runs_and_go_with_the_runner(
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow_runner = ForkServerFlowRunner(spares=1)
    r = await _serving(client, settings, tmp_path, unique, monkeypatch, flow_runner)
    async with running(r):
        first = await _one_run(client, unique)
        assert flow_runner._process is not None
        server = flow_runner._process.pid
        # forked once the first run's process exits (which may still be under way)
        spares = await _eventually(lambda: _children(server) - {first.state.data})
        second = await _one_run(client, unique)
        left = await _eventually(lambda: _children(server) - {second.state.data})
    assert second.state.data in spares  # the spare that waited took the run
    assert first.state.data != second.state.data
    # A spare whose server is gone reads end-of-file and exits.
    await _eventually(lambda: not any(alive(pid) for pid in left))


async def test_a_long_run_does_not_hold_up_the_next_spare(
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spare is forked when a run's process exits, or after SPARE_DELAY if
    the run is still going: a second run arriving during a long first one is
    still handed to a connected spare."""
    flow_runner = ForkServerFlowRunner(spares=1)
    r = await _serving(client, settings, tmp_path, unique, monkeypatch, flow_runner)
    async with running(r):
        long = await client.create_flow_run(f"{unique}/d", parameters={"seconds": 120})
        active = await _eventually(lambda: r._active.get(long.id))
        assert active is not None and isinstance(active.process, _Forked)
        assert flow_runner._process is not None
        server, busy = flow_runner._process.pid, active.process.pid
        # a spare, forked while the long run's process still runs
        spares = await _eventually(lambda: _children(server) - {busy})
        assert (await client.read_flow_run(long.id)).state.type is StateType.RUNNING
        second = await _one_run(client, unique)
        assert second.state.data in spares
        await client.cancel_flow_run(long.id)
