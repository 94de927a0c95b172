"""``docker compose up`` on a real Docker engine: the stack as users start it.

One stack per module, under a project name of its own and with its ports
published on free loopback ports (``SLUICE_*_PUBLISH``), from the image the
session built. The scenarios run in file order on that stack: healthy, then
hello-world completes through a runner container, a sleepy run cancels,
``--scale runner=3`` spreads runs, ``restart nats`` keeps an in-flight run,
and ``stop`` settles a run with the reason.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from engine.client import Client
from services.dev import free_port
from shared.errors import StackUnavailable
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import StateType

from .conftest import REPO

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    nats_port: int
    home: Path

    def compose(self, *args: str, timeout: float = 300) -> str:
        argv = ["docker", "compose", "-p", self.project, "-f", str(REPO / "docker-compose.yml")]
        done = subprocess.run(
            [*argv, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)}: {done.stderr}\n{self.logs()}")
        return done.stdout

    def logs(self) -> str:
        argv = ["docker", "compose", "-p", self.project, "-f", str(REPO / "docker-compose.yml")]
        done = subprocess.run(
            [*argv, "logs", "--tail", "40"], env=self.env, capture_output=True, text=True
        )
        return done.stdout[-8000:]

    def settings(self) -> Settings:
        return Settings(
            nats_url=f"nats://127.0.0.1:{self.nats_port}",
            nats_user="client",
            nats_password="client-dev-password",
            home=self.home,
            request_timeout=10.0,
        )


@pytest.fixture(scope="module")
def stack(sluice_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "COMPOSE_"))}
    nats_port = free_port()
    env |= {
        "SLUICE_NATS_PUBLISH": f"127.0.0.1:{nats_port}",
        "SLUICE_NATS_MONITOR_PUBLISH": f"127.0.0.1:{free_port()}",
        "SLUICE_UI_PUBLISH": f"127.0.0.1:{free_port()}",
    }
    project = f"sluice-test-{uuid.uuid4().hex[:8]}"
    s = Stack(project, env, nats_port, tmp_path_factory.mktemp("compose-home"))
    started = time.monotonic()
    try:
        s.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "240", timeout=400)
        print(f"docker compose up --wait: healthy in {time.monotonic() - started:.1f} s")
        yield s
    finally:
        down = ["down", "-v", "--remove-orphans", "-t", "5"]
        argv = ["docker", "compose", "-p", project, "-f", str(REPO / "docker-compose.yml")]
        subprocess.run([*argv, *down], env=env, capture_output=True, timeout=300)


async def until(s: Stack, run_id: str, *types: StateType, timeout: float = 120) -> FlowRun:
    """The run once it is in one of ``types``, reading through NATS restarts."""
    with anyio.fail_after(timeout):
        while True:
            try:
                async with Client(s.settings()) as c:
                    while True:
                        run = await c.read_flow_run(run_id)
                        if run.state.type in types:
                            return run
                        await anyio.sleep(0.1)
            except StackUnavailable:
                await anyio.sleep(0.5)


async def create(s: Stack, deployment: str, **parameters: object) -> FlowRun:
    key = uuid.uuid4().hex
    with anyio.fail_after(90):
        while True:
            try:
                async with Client(s.settings()) as c:
                    return await c.create_flow_run(
                        deployment, parameters=parameters, idempotency_key=key
                    )
            except StackUnavailable:
                await anyio.sleep(0.5)


async def test_hello_world_completes_through_a_runner_container(stack: Stack) -> None:
    started = time.monotonic()
    run = await create(stack, "hello-world/default", name="compose")
    final = await until(stack, run.id, *FINAL)
    elapsed = time.monotonic() - started
    assert final.state.type is StateType.COMPLETED, (final.state, stack.logs())
    async with Client(stack.settings()) as c:
        lines = [r.message async for r in c.logs(run.id)]
    assert any("Hello, compose!" in line for line in lines), lines
    print(f"compose: create -> Completed {elapsed:.2f} s")


async def test_a_sleepy_run_cancels(stack: Stack) -> None:
    run = await create(stack, "sleepy/default", seconds=120)
    await until(stack, run.id, StateType.RUNNING)
    started = time.monotonic()
    async with Client(stack.settings()) as c:
        await c.cancel_flow_run(run.id)
    final = await until(stack, run.id, *FINAL)
    elapsed = time.monotonic() - started
    assert final.state.type is StateType.CANCELLED, final.state
    print(f"compose: cancel -> Cancelled {elapsed:.2f} s")


async def test_scaled_runners_share_the_runs(stack: Stack) -> None:
    stack.compose("up", "-d", "--no-build", "--wait", "--scale", "runner=3", timeout=400)
    ps = stack.compose("ps", "-q", "runner").split()
    assert len(ps) == 3
    runs = [await create(stack, "sleepy/default", seconds=3) for _ in range(12)]
    finals = [await until(stack, run.id, *FINAL, timeout=180) for run in runs]
    assert {f.state.type for f in finals} == {StateType.COMPLETED}
    runners = {f.runner for f in finals}
    print(f"compose: 12 runs on {len(runners)} of 3 runners")
    assert len(runners) >= 2, runners


async def test_a_nats_restart_keeps_the_run_in_flight(stack: Stack) -> None:
    run = await create(stack, "sleepy/default", seconds=15)
    await until(stack, run.id, StateType.RUNNING)
    stack.compose("restart", "nats")
    final = await until(stack, run.id, *FINAL, timeout=180)
    assert final.state.type is StateType.COMPLETED, f"{final.state.message}\n{stack.logs()}"


async def test_stop_settles_the_runs_with_the_reason(stack: Stack) -> None:
    """``docker compose stop`` stops runners before nats (they depend on it), so each
    runner reports its runs while it still can; nats alone is started again to read."""
    run = await create(stack, "sleepy/default", seconds=120)
    running = await until(stack, run.id, StateType.RUNNING)
    stack.compose("stop", timeout=180)
    stack.compose("start", "nats", timeout=120)
    final = await until(stack, run.id, *FINAL, timeout=90)
    assert final.state.type is StateType.CRASHED, final.state
    message = final.state.message or ""
    assert running.runner and running.runner in message
    assert "shut down" in message
