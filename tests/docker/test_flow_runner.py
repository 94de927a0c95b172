"""``DockerFlowRunner`` against a real Docker engine.

A deployment on it completes, with its environment and volumes; a cancel
stops the container and the run ends Cancelled; a container stopped or killed
behind the runner's back gives the exit-code message; a SIGKILLed runner's
container is removed by its restarted instance, which reports the run; no
exited container is left. Containers join the host's network, so they reach
the session's nats-server on loopback.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from engine.client import Client
from engine.deployments import RunnerDeployment
from engine.docker_runner import DockerFlowRunner
from engine.flow_runners import explain_exit
from engine.runner import Runner
from services.cancellation_watcher import CancellationWatcher
from services.dev import NatsServer
from services.orchestrator import Orchestrator
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import StateType

from .conftest import REPO, docker, labelled, shared_folder

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FLOWS = """
import os, time
from pathlib import Path
from engine import flow, get_run_logger

@flow(name="{name}-greet")
def greet() -> str:
    word = Path("/data/word.txt").read_text().strip()
    get_run_logger().info("%s %s from pid %d", os.environ["GREETING"], word, os.getpid())
    return word

@flow(name="{name}-sleepy")
def sleepy(seconds: float = 300) -> None:
    get_run_logger().info("sleeping")
    time.sleep(seconds)
"""


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge (a private one)."""
    bridge = docker(
        "network", "inspect", "bridge", "-f", '{{index .Options "com.docker.network.bridge.name"}}'
    ).strip()
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", bridge], capture_output=True, text=True
    ).stdout.split()
    gateway = shown[shown.index("inet") + 1].split("/")[0]
    assert ipaddress.ip_address(gateway).is_private, gateway  # never a public address
    return gateway


def write_flows(tmp_path: Path, name: str) -> Path:
    folder = shared_folder(tmp_path, "flows")
    (folder / "flows.py").write_text(FLOWS.format(name=name))
    (folder / "flows.py").chmod(0o644)
    return folder


async def until(client: Client, run_id: str, *types: StateType, timeout: float = 120) -> FlowRun:
    with anyio.fail_after(timeout):
        while True:
            run = await client.read_flow_run(run_id)
            if run.state.type in types:
                return run
            await anyio.sleep(0.1)


async def container_of(run_id: str, timeout: float = 60) -> str:
    with anyio.fail_after(timeout):
        while True:
            found = await anyio.to_thread.run_sync(labelled, f"sluice.flow-run-id={run_id}")
            if found:
                return found[0]
            await anyio.sleep(0.1)


@asynccontextmanager
async def serving(
    settings: Settings, name: str, folder: Path, image: str | None = None, **options: object
) -> AsyncIterator[Runner]:
    """A runner named ``name`` serving ``<name>-greet/d`` and ``<name>-sleepy/d`` in Docker."""
    options = {"image": image, "networks": ["host"], **options}
    flow_runner = DockerFlowRunner(**options)  # type: ignore[arg-type]
    runner = Runner(name=name, settings=settings, query_seconds=1.0, kill_grace=2.0)
    for function in ("greet", "sleepy"):
        await runner.aadd_deployment(
            RunnerDeployment(
                name="d",
                flow_name=f"{name}-{function}",
                entrypoint=f"flows.py:{function}",
                path=str(folder),
                flow_runner=flow_runner,
            )
        )
    async with anyio.create_task_group() as tg:
        await tg.start(runner.astart)
        yield runner
        await runner.astop(now=True)


async def test_a_deployment_completes_in_a_container_with_its_env_and_volumes(
    sluice_image: str,
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    folder = write_flows(tmp_path, f"d{unique}")
    data = shared_folder(tmp_path, "data")
    (data / "word.txt").write_text("otters\n")
    (data / "word.txt").chmod(0o644)
    name = f"d{unique}"
    options = {"env": {"GREETING": "hello"}, "volumes": [f"{data}:/data:ro"]}
    async with serving(settings, name, folder, sluice_image, **options):
        started = time.monotonic()
        run = await client.create_flow_run(f"{name}-greet/d")
        final = await until(
            client, run.id, StateType.COMPLETED, StateType.FAILED, StateType.CRASHED
        )
        elapsed = time.monotonic() - started
    assert final.state.type is StateType.COMPLETED, final.state
    lines = [record.message async for record in client.logs(run.id)]
    assert any(line.startswith("hello otters from pid") for line in lines), lines
    # stream_output: the container's output reached the runner's.
    assert "hello otters from pid" in capfd.readouterr().err
    print(f"create -> Completed through a container: {elapsed:.2f} s")
    assert labelled(f"sluice.runner-name={name}") == []  # auto_remove: nothing left


async def test_a_cancel_stops_the_container_and_the_run_ends_cancelled(
    sluice_image: str,
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
) -> None:
    name = f"c{unique}"
    folder = write_flows(tmp_path, name)
    async with (
        CancellationWatcher(settings, kill_grace=2.0),
        serving(settings, name, folder, sluice_image),
    ):
        run = await client.create_flow_run(f"{name}-sleepy/d")
        await until(client, run.id, StateType.RUNNING)
        container = await container_of(run.id)
        started = time.monotonic()
        await client.cancel_flow_run(run.id)
        final = await until(client, run.id, StateType.CANCELLED, StateType.CRASHED)
        elapsed = time.monotonic() - started
    assert final.state.type is StateType.CANCELLED, final.state
    print(f"cancel -> Cancelled through a container: {elapsed:.2f} s")
    assert docker("ps", "-aq", "--filter", f"id={container}").strip() == ""


@pytest.mark.parametrize(("signal_name", "code"), [("KILL", 137), ("TERM", 143)])
async def test_a_container_killed_behind_the_runners_back_explains_its_exit(
    sluice_image: str,
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    signal_name: str,
    code: int,
) -> None:
    name = f"k{unique}"
    folder = write_flows(tmp_path, name)
    async with serving(settings, name, folder, sluice_image):
        run = await client.create_flow_run(f"{name}-sleepy/d")
        await until(client, run.id, StateType.RUNNING)
        container = await container_of(run.id)
        docker("kill", "--signal", signal_name, container)
        final = await until(client, run.id, StateType.CRASHED, StateType.FAILED)
    assert final.state.type is StateType.CRASHED
    assert final.state.message == explain_exit(code)
    assert labelled(f"sluice.runner-name={name}") == []


async def test_a_restarted_runner_removes_its_killed_instances_container(
    sluice_image: str,
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
) -> None:
    name = f"r{unique}"
    folder = write_flows(tmp_path, name)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        "SLUICE_NATS_URL": settings.nats_url,
        "SLUICE_HOME": str(tmp_path / "runner-home"),
    }
    argv = [sys.executable, "-m", "tests.docker._runner_proc", name, str(folder), sluice_image]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, cwd=REPO, env=env)

    first = start()
    second: subprocess.Popen[bytes] | None = None
    try:
        with anyio.fail_after(60):
            while True:
                try:
                    await client.read_deployment(f"{name}-sleepy/docker")
                    break
                except Exception:
                    await anyio.sleep(0.2)
        run = await client.create_flow_run(f"{name}-sleepy/docker")
        await until(client, run.id, StateType.RUNNING)
        container = await container_of(run.id)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        # No lifeline reaches into a container: it runs on until someone stops it.
        assert docker("inspect", "-f", "{{.State.Running}}", container).strip() == "true"
        second = start()
        final = await until(client, run.id, StateType.CRASHED, timeout=120)
        assert f"stopped its container {container[:12]}" in (final.state.message or ""), final.state
        assert labelled(f"sluice.runner-name={name}") == []
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        for left in labelled(f"sluice.runner-name={name}"):
            docker("rm", "-f", left, check=False)


async def test_the_issues_reproduction_runs_to_completion(
    sluice_image: str,
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
) -> None:
    """A process in a container that is handed a runner's pid does not take its own
    init for a dead runner (issue 16): ``docker run --init -e SLUICE_RUNNER_PID=1``."""
    name = f"p{unique}"
    folder = write_flows(tmp_path, name)
    data = shared_folder(tmp_path, "data")
    (data / "word.txt").write_text("kept\n")
    (data / "word.txt").chmod(0o644)
    await client.register_deployment(
        RunnerDeployment(
            name="d", flow_name=f"{name}-greet", entrypoint="flows.py:greet", path=str(folder)
        ).to_request()
    )
    run = await client.create_flow_run(f"{name}-greet/d", idempotency_key=unique)
    for pid in ("1", str(os.getpid())):
        argv = ["run", "--rm", "--init", "--network", "host", "-e", f"SLUICE_RUNNER_PID={pid}"]
        argv += ["-e", f"SLUICE_RUNNER_PIDNS={os.readlink('/proc/self/ns/pid')}"]
        argv += ["-e", f"SLUICE_FLOW_RUN_ID={run.id}", "-e", f"SLUICE_NATS_URL={settings.nats_url}"]
        argv += ["-e", "GREETING=hi", "-v", f"{folder}:{folder}:ro", "-v", f"{data}:/data:ro"]
        argv += ["-w", str(folder), sluice_image, "python", "-m", "engine"]
        done = await anyio.run_process(["docker", *argv], check=False)
        if pid == "1":
            assert done.returncode == 0, done.stderr.decode()
            final = await client.read_flow_run(run.id)
            assert final.state.type is StateType.COMPLETED
        else:  # the run is over: a second execution is refused, but not killed
            assert done.returncode == 1, done.stderr.decode()


async def test_a_stopping_runner_stops_its_containers(
    sluice_image: str,
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
) -> None:
    name = f"s{unique}"
    folder = write_flows(tmp_path, name)
    async with serving(settings, name, folder, sluice_image):
        run = await client.create_flow_run(f"{name}-sleepy/d")
        await until(client, run.id, StateType.RUNNING)
        container = await container_of(run.id)
    final = await until(client, run.id, StateType.CRASHED, StateType.COMPLETED)
    assert final.state.type is StateType.CRASHED
    assert f"The runner {name} shut down before the run finished" in (final.state.message or "")
    assert docker("ps", "-aq", "--filter", f"id={container}").strip() == ""


async def test_a_run_on_the_default_bridge_network(
    sluice_image: str, unique: str, tmp_path: Path
) -> None:
    """No ``networks``: the container is on Docker's default bridge and reaches a
    nats-server listening on the bridge's gateway address (not off this machine)."""
    gateway = bridge_gateway()
    server = NatsServer(tmp_path / "nats", host=gateway)
    server.start()
    try:
        settings = Settings(nats_url=server.url, home=tmp_path / "home", request_timeout=10.0)
        name = f"b{unique}"
        folder = write_flows(tmp_path, name)
        data = shared_folder(tmp_path, "data")
        (data / "word.txt").write_text("bridged\n")
        (data / "word.txt").chmod(0o644)
        flow_runner = DockerFlowRunner(
            image=sluice_image, env={"GREETING": "hi"}, volumes=[f"{data}:/data:ro"]
        )
        runner = Runner(name=name, settings=settings, query_seconds=1.0, kill_grace=2.0)
        async with Orchestrator(settings, grace=2.0), Client(settings) as client:
            await runner.aadd_deployment(
                RunnerDeployment(
                    name="d",
                    flow_name=f"{name}-greet",
                    entrypoint="flows.py:greet",
                    path=str(folder),
                    flow_runner=flow_runner,
                )
            )
            async with anyio.create_task_group() as tg:
                await tg.start(runner.astart)
                run = await client.create_flow_run(f"{name}-greet/d")
                final = await until(client, run.id, StateType.COMPLETED, StateType.CRASHED)
                await runner.astop(now=True)
            assert final.state.type is StateType.COMPLETED, final.state
            lines = [record.message async for record in client.logs(run.id)]
            assert any(line.startswith("hi bridged") for line in lines), lines
    finally:
        server.stop()


async def test_a_runner_that_loses_its_lease_stops_its_containers(
    sluice_image: str, unique: str, tmp_path: Path
) -> None:
    """NATS gone: the runner cannot renew its lease, so it stops its containers
    before the rest of the stack may hand the run on."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    settings = Settings(nats_url=server.url, home=tmp_path / "home", request_timeout=5.0)
    name = f"l{unique}"
    folder = write_flows(tmp_path, name)
    flow_runner = DockerFlowRunner(image=sluice_image, networks=["host"], stream_output=False)
    runner = Runner(
        name=name, settings=settings, query_seconds=1.0, kill_grace=2.0, heartbeat_seconds=1.0
    )
    container = ""
    try:
        async with Orchestrator(settings, grace=2.0), Client(settings) as client:
            await runner.aadd_deployment(
                RunnerDeployment(
                    name="d",
                    flow_name=f"{name}-sleepy",
                    entrypoint="flows.py:sleepy",
                    path=str(folder),
                    flow_runner=flow_runner,
                )
            )
            async with anyio.create_task_group() as tg:
                await tg.start(runner.astart)
                run = await client.create_flow_run(f"{name}-sleepy/d")
                await until(client, run.id, StateType.RUNNING)
                container = await container_of(run.id)
                server.stop()
                with anyio.fail_after(90):
                    while True:
                        label = f"sluice.flow-run-id={run.id}"
                        if not await anyio.to_thread.run_sync(labelled, label):
                            break
                        await anyio.sleep(0.2)
                server.start()  # the same port: everything reconnects and shuts down cleanly
                final = await until(client, run.id, StateType.CRASHED, StateType.CANCELLED)
                await runner.astop(now=True)
        assert final.state.type is StateType.CRASHED, final.state
    finally:
        server.stop()
        if container:
            docker("rm", "-f", container, check=False)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"image": "sluice-absent:1", "image_pull_policy": "NEVER"}, "is not on the Docker engine"),
        # A registry on a loopback port nobody listens on: the pull fails here, on this machine.
        ({"image": "localhost:1/absent:1"}, "could not pull image 'localhost:1/absent:1'"),
        ({"networks": ["host", "sluice-no-such-network"]}, "could not connect to network"),
    ],
)
async def test_a_run_that_cannot_start_crashes_saying_why(
    sluice_image: str,
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    options: dict[str, object],
    reason: str,
) -> None:
    name = f"f{unique}"
    folder = write_flows(tmp_path, name)
    options = {"image": sluice_image, **options}
    async with serving(settings, name, folder, **options):  # type: ignore[arg-type]
        run = await client.create_flow_run(f"{name}-greet/d")
        final = await until(client, run.id, StateType.CRASHED, StateType.COMPLETED)
    assert final.state.type is StateType.CRASHED
    assert final.state.message is not None
    assert final.state.message.startswith("The flow run could not be started:")
    assert reason in final.state.message
    assert labelled(f"sluice.runner-name={name}") == []  # a container made but not started goes
