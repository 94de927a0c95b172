"""Cancellation and crash detection with real runner and flow-run processes."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from engine.client import Client
from engine.runner import Runner
from services.cancellation_watcher import CancellationWatcher
from services.dev import NatsServer
from services.dev._natsserver import server_binary
from services.orchestrator import Orchestrator
from shared.errors import StackUnavailable
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import StateType

from .._procs import service_env
from ._script import ROOT
from .test_runner import deployment, runner, running

pytestmark = pytest.mark.anyio


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Settings with a short heartbeat, so dead runners are noticed quickly."""
    return Settings(nats_url=settings.nats_url, home=settings.home, heartbeat_interval=0.5)


@pytest.fixture
async def watcher(orchestrator: Orchestrator, fast: Settings) -> AsyncIterator[CancellationWatcher]:
    async with CancellationWatcher(fast, kill_grace=0.5) as w:
        yield w


async def until(client: Client, run_id: str, *types: StateType) -> FlowRun:
    async with contextlib.aclosing(client.watch_flow_run(run_id)) as runs:
        async for run in runs:
            if run.state.type in types:
                return run
    raise AssertionError("unreachable")


async def runner_process(name: str, deployment_id: str, env: dict[str, str]) -> Process:
    """``run_runner.py`` in a session of its own: a runner process to kill."""
    return await anyio.open_process(
        [sys.executable, str(Path(__file__).with_name("run_runner.py")), name, deployment_id],
        env=env,
        start_new_session=True,
        stdout=None,
        stderr=None,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("ignore_term", [False, True])
async def test_cancel_a_running_run(
    watcher: CancellationWatcher, client: Client, fast: Settings, unique: str, ignore_term: bool
) -> None:
    r = runner(fast, name=f"r-{unique}", kill_grace=0.5, heartbeat_seconds=0.5)
    await r.aadd_deployment(deployment(f"f{unique}"))
    async with running(r):
        run = await client.create_flow_run(
            f"f{unique}/d", parameters={"sleep": 120, "ignore_term": ignore_term}
        )
        await until(client, run.id, StateType.RUNNING)
        pid = int(r._active[run.id].process.ident.split()[-1])
        cancelling = await client.cancel_flow_run(run.id)
        # The reply carries the state stored when it is sent: Cancelled already
        # when the watcher and the runner were quicker than the reply.
        assert cancelling.state.type in (StateType.CANCELLING, StateType.CANCELLED)
        final = await until(client, run.id, StateType.CANCELLED)
    assert final.state.message == "the flow-run process was stopped"
    assert not alive(pid)


async def test_many_cancels_at_once(
    watcher: CancellationWatcher, client: Client, fast: Settings, unique: str
) -> None:
    r = runner(fast, name=f"r-{unique}", limit=6, heartbeat_seconds=0.5)
    await r.aadd_deployment(deployment(f"f{unique}"))
    async with running(r):
        runs = [
            await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 120})
            for _ in range(6)
        ]
        for run in runs:
            await until(client, run.id, StateType.RUNNING)
        async with anyio.create_task_group() as tg:
            for run in runs:
                tg.start_soon(client.cancel_flow_run, run.id)
                tg.start_soon(client.cancel_flow_run, run.id)  # twice is harmless
        finals = [await until(client, run.id, StateType.CANCELLED) for run in runs]
    assert all(f.state.type is StateType.CANCELLED for f in finals)
    assert r.in_progress == 0


async def test_a_cancelling_run_without_a_process(
    watcher: CancellationWatcher, client: Client, fast: Settings, unique: str
) -> None:
    from shared.messages import ProposedState

    dep = Runner(settings=fast)
    await dep.aadd_deployment(deployment(f"f{unique}"))
    run = await client.create_flow_run(f"f{unique}/d")
    await client.propose_state(run.id, ProposedState(type=StateType.RUNNING))
    await client.cancel_flow_run(run.id)
    final = await until(client, run.id, StateType.CANCELLED)
    assert "cannot be guaranteed" in (final.state.message or "")


async def test_a_killed_runner_has_its_runs_crashed(
    watcher: CancellationWatcher, client: Client, fast: Settings, unique: str, tmp_path: Path
) -> None:
    dep_id = await Runner(settings=fast).aadd_deployment(deployment(f"f{unique}"))
    env = service_env(fast) | {"PYTHONPATH": str(ROOT), "SLUICE_HEARTBEAT_INTERVAL": "0.5"}
    name = f"doomed-{unique}"
    proc = await runner_process(name, dep_id, env)
    try:
        run = await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 120})
        running_run = await until(client, run.id, StateType.RUNNING)
        assert running_run.runner == name
        flow_pid = int((running_run.state.message or "").split()[-1])
        os.kill(proc.pid, signal.SIGKILL)  # the runner alone: its child is in another session
        await proc.wait()
        final = await until(client, run.id, StateType.CRASHED)
        with anyio.fail_after(30):  # the kernel's parent-death signal ends it too
            while alive(flow_pid):  # noqa: ASYNC110 - polling another process's life
                await anyio.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"runner {name} stopped heartbeating" in (final.state.message or "")


async def test_a_dead_runners_slot_comes_back_and_the_next_run_starts_elsewhere(
    watcher: CancellationWatcher, client: Client, fast: Settings, unique: str
) -> None:
    """Limit 1: the runner holding the slot is SIGKILLed; the waiting run starts on the other."""
    survivor = runner(fast, name=f"survivor-{unique}", heartbeat_seconds=0.5)
    dep_id = await survivor.aadd_deployment(deployment(f"f{unique}", concurrency_limit=1))
    env = service_env(fast) | {"PYTHONPATH": str(ROOT), "SLUICE_HEARTBEAT_INTERVAL": "0.5"}
    doomed = f"doomed-{unique}"
    proc = await runner_process(doomed, dep_id, env)
    try:
        first = await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 120})
        held = await until(client, first.id, StateType.RUNNING)
        assert held.runner == doomed
        async with running(survivor):
            second = await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 0.1})
            waiting = await client.read_flow_run(second.id)
            assert waiting.state.type is StateType.SCHEDULED  # the one slot is taken
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            done = await until(client, second.id, StateType.COMPLETED, StateType.CRASHED)
        crashed = await client.read_flow_run(first.id)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert done.state.type is StateType.COMPLETED
    assert done.runner == survivor.name
    assert crashed.state.type is StateType.CRASHED


async def test_a_restarted_runner_kills_and_reports_what_it_left_behind(
    orchestrator: Orchestrator, client: Client, fast: Settings, unique: str
) -> None:
    name = f"phoenix-{unique}"
    dep_id = await Runner(settings=fast).aadd_deployment(deployment(f"f{unique}"))
    env = service_env(fast) | {
        "PYTHONPATH": str(ROOT),
        "SLUICE_HEARTBEAT_INTERVAL": "0.5",
        "WORKER_NO_LIFELINE": "1",  # its flow process outlives it
    }
    proc = await runner_process(name, dep_id, env)
    try:
        run = await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 120})
        running_run = await until(client, run.id, StateType.RUNNING)
        flow_pid = int((running_run.state.message or "").split()[-1])
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        assert alive(flow_pid)  # left behind, still running
        again = runner(fast, name=name, heartbeat_seconds=0.5)  # the same runner, restarted
        await again.aserve_deployment(dep_id)
        async with running(again):
            final = await until(client, run.id, StateType.CRASHED)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"runner {name} restarted and killed its process {flow_pid}" in (
        final.state.message or ""
    )
    with anyio.fail_after(30):  # SIGKILLed; gone once init has reaped it
        while alive(flow_pid):  # noqa: ASYNC110 - polling another process's life
            await anyio.sleep(0.05)


async def test_the_watcher_outlives_a_server_back_without_jetstream_for_a_while(
    own_server: NatsServer, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server comes back but JetStream does not answer yet (here: a bare
    server on the same port). The watcher keeps trying to follow the runners'
    heartbeats instead of dying, and once JetStream is back a killed runner
    still has its run crashed."""
    fast = Settings(
        nats_url=own_server.url, home=tmp_path / "home", heartbeat_interval=0.5, request_timeout=2.0
    )
    async with (
        Orchestrator(fast, grace=2.0),
        CancellationWatcher(fast, kill_grace=0.5),
        Client(fast) as client,
    ):
        own_server.kill()
        bare = await anyio.open_process(
            [server_binary(), "-a", own_server.host, "-p", str(own_server.port)]
        )
        try:
            with anyio.fail_after(60):
                while "cannot follow runner heartbeats" not in caplog.text:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
        finally:
            bare.terminate()
            await bare.wait()
        await anyio.to_thread.run_sync(own_server.start)

        with anyio.fail_after(60):
            while True:  # the services reconnect with a back-off
                try:
                    dep_id = await Runner(settings=fast).aadd_deployment(deployment(f"f{unique}"))
                    break
                except StackUnavailable:
                    await anyio.sleep(0.2)
        env = service_env(fast) | {"PYTHONPATH": str(ROOT), "SLUICE_HEARTBEAT_INTERVAL": "0.5"}
        name = f"doomed-{unique}"
        proc = await runner_process(name, dep_id, env)
        try:
            run = await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 120})
            await until(client, run.id, StateType.RUNNING)
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            final = await until(client, run.id, StateType.CRASHED)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert f"runner {name} stopped heartbeating" in (final.state.message or "")
