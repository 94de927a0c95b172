"""Seed 003 (the Runner), as its users write it: plain-script methods, execute_flow_run,
background runs, the drain on stop, and deployments that run where they are served."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from engine import flow
from engine.client import Client
from engine.deployments import RunnerDeployment
from engine.runner import Runner
from engine.runner._serving import private_queue
from services.cancellation_watcher import CancellationWatcher
from services.orchestrator import Orchestrator
from shared.errors import SluiceError
from shared.models import CronSchedule
from shared.settings import Settings
from shared.states import StateType

from .._procs import service_env
from ._script import ROOT
from .test_runner import deployment, runner, running
from .test_watcher import alive, until

pytestmark = pytest.mark.anyio


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return Settings(nats_url=settings.nats_url, home=settings.home, heartbeat_interval=0.5)


@pytest.fixture
async def watcher(orchestrator: Orchestrator, fast: Settings) -> AsyncIterator[CancellationWatcher]:
    async with CancellationWatcher(fast, kill_grace=0.5) as w:
        yield w


# Seed 003's Runner example, verbatim but for `engine` and a unique runner name.
SEED_003 = """
from engine import flow, Runner

@flow
def hello_flow(name):
    print(f"hello {{name}}")

@flow
def goodbye_flow(name):
    print(f"goodbye {{name}}")

if __name__ == "__main__":
    runner = Runner(name="{runner}")

    # Will be runnable via the API
    runner.add_flow(hello_flow)

    # Run on a cron schedule
    runner.add_flow(goodbye_flow, schedule={{"cron": "0 * * * *"}})

    runner.start()
"""


async def _deployment_appears(client: Client, name: str) -> None:
    while True:
        try:
            await client.read_deployment(name)
            return
        except SluiceError:
            await anyio.sleep(0.1)


async def test_the_seed_runner_example_runs_as_a_plain_script(
    client: Client, settings: Settings, unique: str, tmp_path: Path
) -> None:
    name = f"my-runner-{unique}"
    script = tmp_path / "runner_seed.py"
    script.write_text(textwrap.dedent(SEED_003.format(runner=name)))
    env = service_env(settings) | {"PYTHONPATH": str(ROOT)}
    proc = await anyio.open_process([sys.executable, str(script)], cwd=tmp_path, env=env)
    try:
        with anyio.fail_after(60):
            await _deployment_appears(client, f"goodbye-flow/{name}")
        goodbye = await client.read_deployment(f"goodbye-flow/{name}")
        [schedule] = goodbye.schedules
        assert schedule.schedule == CronSchedule(cron="0 * * * *")
        assert goodbye.queue == private_queue(name)
        run = await client.create_flow_run(f"hello-flow/{name}", parameters={"name": "seed"})
        final = await client.wait_for_flow_run(run.id)
        assert final.state.type is StateType.COMPLETED, final.state.message
        assert final.runner == name
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = await proc.wait()
    assert code == 0


async def test_a_blocking_method_in_an_event_loop_raises_and_names_its_async_twin(
    settings: Settings,
) -> None:
    @flow
    def nothing() -> None:
        pass

    r = Runner(settings=settings)
    with pytest.raises(RuntimeError, match=r"await runner\.aadd_flow"):
        r.add_flow(nothing)
    with pytest.raises(RuntimeError, match=r"await runner\.astart"):
        r.start()
    with pytest.raises(RuntimeError, match=r"await runner\.aexecute_flow_run"):
        r.execute_flow_run("0" * 32)


async def test_execute_flow_run_answers_cancellation(
    watcher: CancellationWatcher, client: Client, fast: Settings, unique: str
) -> None:
    r = runner(fast, name=f"x-{unique}", kill_grace=0.5, heartbeat_seconds=0.5)
    await r.aadd_deployment(deployment(f"f{unique}"))
    run = await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 600})
    async with anyio.create_task_group() as tg:
        done: list[StateType] = []

        async def execute() -> None:
            done.append((await r.aexecute_flow_run(run.id)).state.type)

        tg.start_soon(execute)
        await until(client, run.id, StateType.RUNNING)
        pid = int(r._active[run.id].process.ident.split()[-1])
        await client.cancel_flow_run(run.id)
        final = await until(client, run.id, StateType.CANCELLED)
    assert done == [StateType.CANCELLED]  # the call returned once the process ended
    assert final.state.message == "the flow-run process was stopped"
    assert not alive(pid)


async def test_background_runs_wait_cancel_and_cancel_all(
    orchestrator: object, client: Client, settings: Settings, unique: str
) -> None:
    r = runner(settings, name=f"bg-{unique}", kill_grace=0.5, limit=3)
    await r.aadd_deployment(deployment(f"f{unique}"))
    quick, slow, slower = [
        await client.create_flow_run(f"f{unique}/d", parameters=p)
        for p in ({}, {"sleep": 600}, {"sleep": 600})
    ]
    assert r.has_slots_available()
    handle = await anyio.to_thread.run_sync(r.execute_in_background, quick.id)
    ended = await anyio.to_thread.run_sync(handle.wait, 60.0)
    assert ended.state.type is StateType.COMPLETED and handle.done()

    one = await anyio.to_thread.run_sync(r.execute_in_background, slow.id)
    two = await anyio.to_thread.run_sync(r.execute_in_background, slower.id)
    await until(client, slow.id, StateType.RUNNING)
    await until(client, slower.id, StateType.RUNNING)
    await anyio.to_thread.run_sync(one.cancel)
    assert (await anyio.to_thread.run_sync(one.wait, 60.0)).state.type is StateType.CANCELLED
    await anyio.to_thread.run_sync(r.cancel_all)
    assert (await anyio.to_thread.run_sync(two.wait, 60.0)).state.type is StateType.CANCELLED


async def test_background_runs_of_a_started_runner_run_on_its_loop(
    orchestrator: object, client: Client, settings: Settings, unique: str
) -> None:
    r = runner(settings, name=f"bgs-{unique}", kill_grace=0.5, queue=f"none-{unique}")
    await r.aadd_deployment(deployment(f"f{unique}"))
    # Not dispatched to it (another queue, and the runner serves only its own).
    dep = deployment(f"g{unique}", queue=f"other-{unique}")
    await Runner(settings=settings).aadd_deployment(dep)
    run = await client.create_flow_run(f"g{unique}/d", parameters={"sleep": 600})
    async with anyio.create_task_group() as tg:
        await tg.start(r.astart)
        handle = await anyio.to_thread.run_sync(r.execute_in_background, run.id)
        await until(client, run.id, StateType.RUNNING)
        assert handle.on_runner_loop and r.in_progress == 1
        await anyio.to_thread.run_sync(r.cancel_all)
        ended = await anyio.to_thread.run_sync(handle.wait, 60.0)
        await r.astop()
    assert ended.state.type is StateType.CANCELLED


async def test_stop_drains_runs_in_progress_and_takes_no_new_work(
    orchestrator: object, client: Client, settings: Settings, unique: str
) -> None:
    r = runner(settings, name=f"drain-{unique}", drain_seconds=120.0)
    await r.aadd_deployment(deployment(f"f{unique}"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(r.astart)
        run = await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 3})
        await until(client, run.id, StateType.RUNNING)
        await r.astop()
        late = await client.create_flow_run(f"f{unique}/d")
    finished = await client.read_flow_run(run.id)
    assert finished.state.type is StateType.COMPLETED, finished.state.message
    assert (await client.read_flow_run(late.id)).state.type is StateType.SCHEDULED


async def test_a_second_stop_kills_at_once(
    orchestrator: object, client: Client, settings: Settings, unique: str
) -> None:
    r = runner(settings, name=f"hurry-{unique}", drain_seconds=600.0, kill_grace=0.5)
    await r.aadd_deployment(deployment(f"f{unique}"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(r.astart)
        run = await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 600})
        await until(client, run.id, StateType.RUNNING)
        await r.astop()
        await r.astop()  # a second Ctrl-C
    final = await client.read_flow_run(run.id)
    assert final.state.type is StateType.CRASHED
    assert f"runner {r.name} shut down" in (final.state.message or "")


NAP = """
import time
from engine import flow

@flow(name="{name}")
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"
"""


async def _runner_service(
    client: Client, settings: Settings, unique: str, tmp_path: Path
) -> tuple[Process, str]:
    (tmp_path / "nap.py").write_text(textwrap.dedent(NAP.format(name=f"f{unique}")))
    dep_id = await Runner(settings=settings).aadd_deployment(
        RunnerDeployment(
            name="d", flow_name=f"f{unique}", entrypoint="nap.py:nap", path=str(tmp_path)
        )
    )
    env = service_env(settings) | {"PYTHONPATH": str(ROOT)}
    args = ["--name", f"svc-{unique}", "--queue", "", "--deployment", dep_id]
    proc = await anyio.open_process(
        [sys.executable, "-m", "services.runner", *args, "--drain-seconds", "600"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"f{unique}/d"


@pytest.mark.parametrize("signals", [1, 2])
async def test_the_runner_service_drains_on_sigterm_and_a_second_one_kills(
    orchestrator: object,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    signals: int,
) -> None:
    """python -m services.runner: SIGTERM lets the run finish, then the process exits;
    a second SIGTERM kills the run at once."""
    proc, name = await _runner_service(client, settings, unique, tmp_path)
    try:
        run = await client.create_flow_run(name, parameters={"seconds": 3 if signals == 1 else 600})
        await until(client, run.id, StateType.RUNNING)
        for _ in range(signals):
            proc.send_signal(signal.SIGTERM)
            await anyio.sleep(0.5)  # two separate signals, not one merged delivery
        with anyio.fail_after(120):
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0
    final = await client.read_flow_run(run.id)
    if signals == 1:
        assert final.state.type is StateType.COMPLETED, final.state.message
        assert final.state.data == "rested"
    else:
        assert final.state.type is StateType.CRASHED
        assert f"runner svc-{unique} shut down" in (final.state.message or "")


SERVED_NAP = (
    NAP
    + """
if __name__ == "__main__":
    from engine import serve

    serve(nap.to_deployment("served"), drain_seconds=120)
"""
)


async def test_serve_drains_on_ctrl_c(
    client: Client, settings: Settings, unique: str, tmp_path: Path
) -> None:
    (tmp_path / "nap.py").write_text(textwrap.dedent(SERVED_NAP.format(name=f"f{unique}")))
    env = service_env(settings) | {"PYTHONPATH": str(ROOT)}
    proc = await anyio.open_process(
        [sys.executable, "nap.py"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL
    )
    try:
        with anyio.fail_after(60):
            await _deployment_appears(client, f"f{unique}/served")
        run = await client.create_flow_run(f"f{unique}/served", parameters={"seconds": 3})
        await until(client, run.id, StateType.RUNNING)
        proc.send_signal(signal.SIGINT)
        with anyio.fail_after(120):
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0
    final = await client.read_flow_run(run.id)
    assert final.state.type is StateType.COMPLETED, final.state.message


async def test_a_served_deployment_runs_only_where_it_is_served(
    orchestrator: object, client: Client, settings: Settings, unique: str
) -> None:
    """Seed 003: a runner executes the deployments it serves. A runner serving the
    shared queue (as `sluice dev`'s does) is running first and never takes them."""
    shared = runner(settings, name=f"queue-{unique}", queue="default")
    served = runner(settings, name=f"served-{unique}")
    await served.aadd_deployment(deployment(f"f{unique}"))
    stored = await client.read_deployment(f"f{unique}/d")
    assert stored.queue == private_queue(served.name)
    async with running(shared):
        runs = [await client.create_flow_run(f"f{unique}/d") for _ in range(3)]
        async with running(served):
            finals = [await client.wait_for_flow_run(r.id) for r in runs]
    assert {f.runner for f in finals} == {served.name}
    # A queue given on purpose is shared.
    await served.aadd_deployment(deployment(f"g{unique}", queue="default"))
    assert (await client.read_deployment(f"g{unique}/d")).queue == "default"
