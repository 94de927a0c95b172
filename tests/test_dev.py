"""The embedded stack as a user starts it: `python -m services.dev` (what `sluice dev` execs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from engine.client import Client
from services.dev import free_port
from shared.errors import StackUnavailable
from shared.messages import RegisterDeployment
from shared.settings import Settings
from shared.states import StateType

from ._procs import (
    nats_server_of,
    service_env,
    start_service,
    stop_dev_stack,
    wait_until_serving,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT])
async def test_dev_stack_serves_and_stops_cleanly(tmp_path: Path, stop_with: int) -> None:
    settings = Settings(nats_url=f"nats://127.0.0.1:{free_port()}", home=tmp_path / "home")
    proc = start_service("services.dev", settings, tmp_path / "dev.log")
    try:
        await wait_until_serving(settings, proc)
        async with Client(settings) as c:
            await c.register_deployment(RegisterDeployment(name="d", flow_name="hello"))
            run = await c.create_flow_run("hello")
            assert run.deployment_name == "hello/d"
        assert (settings.home / "nats" / "jetstream").is_dir()
        proc.send_signal(stop_with)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    # the private nats-server went with it: its port is free again
    port = int(settings.nats_url.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_dev_stack_says_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = Settings(nats_url=f"nats://127.0.0.1:{port}", home=tmp_path / "home")
        done = subprocess.run(
            [sys.executable, "-m", "services.dev"],
            env=service_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"port {port}" in done.stderr
    assert "already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_dev_stack_refuses_a_remote_url(tmp_path: Path) -> None:
    settings = Settings(nats_url="nats://nats.example.com:4222", home=tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-m", "services.dev"],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "not this machine" in done.stderr


def test_sluice_dev_passes_the_ui_port_on(tmp_path: Path) -> None:
    # `sluice dev --ui-port N` reaches the stack: a taken port is refused by name.
    settings = Settings(nats_url=f"nats://127.0.0.1:{free_port()}", home=tmp_path / "home")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "engine.cli", "dev", "--ui-port", str(port)],
            env=service_env(settings),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


async def kill_nats_server(
    settings: Settings, before: int | None = None, stack: subprocess.Popen[str] | None = None
) -> int | None:
    """SIGKILL the stack's nats-server once it serves (one other than ``before``);
    None if the ``stack`` process ended first."""
    port = int(settings.nats_url.rsplit(":", 1)[1])
    with anyio.fail_after(60):
        while (pid := nats_server_of(settings.home)) is None or pid == before:
            if stack is not None and stack.poll() is not None:
                return None
            await anyio.sleep(0.05)
        while True:
            try:
                await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                break
            except OSError:
                await anyio.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return pid


async def serving_dev_stack(
    tmp_path: Path, **env: str
) -> tuple[Settings, Path, subprocess.Popen[bytes]]:
    """`python -m services.dev` on a free port, once it serves; its settings and log."""
    settings = Settings(nats_url=f"nats://127.0.0.1:{free_port()}", home=tmp_path / "home")
    log = tmp_path / "dev.log"
    proc = start_service("services.dev", settings, log, **env)
    try:
        await wait_until_serving(settings, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return settings, log, proc


async def kill_until_the_stack_stops(settings: Settings, proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL each nats-server the stack starts again, until the stack gives up."""
    pid = None
    while proc.poll() is None:
        pid = await kill_nats_server(settings, before=pid, stack=proc)


async def test_a_killed_nats_server_is_started_again_and_runs_go_on(tmp_path: Path) -> None:
    """A nats-server killed under `sluice dev` (by hand, or out of memory) comes
    back on the same data, and the services reconnect: nothing to restart."""
    settings, log, proc = await serving_dev_stack(tmp_path)
    try:
        async with Client(settings) as c:
            before = await c.create_flow_run("hello-world/default", parameters={"name": "A"})
            await kill_nats_server(settings)
            with anyio.fail_after(60):
                while True:
                    try:
                        after = await c.create_flow_run("hello-world/default")
                        break
                    except StackUnavailable:
                        await anyio.sleep(0.2)
            with anyio.fail_after(60):
                for run in (before, after):
                    done = await c.wait_for_flow_run(run.id)
                    assert done.state.type is StateType.COMPLETED, done.state
        assert proc.poll() is None
        assert "starting it again on the same data" in log.read_text()
    finally:
        stop_dev_stack(proc, settings.home)


async def test_a_nats_server_that_keeps_exiting_stops_the_stack(tmp_path: Path) -> None:
    # Kill only a stack that serves: a server killed while the stack is still
    # starting is a failed start, reported as such (not this case).
    settings, log, proc = await serving_dev_stack(tmp_path, SLUICE_EXAMPLES="")
    try:
        await kill_until_the_stack_stops(settings, proc)
        code = await anyio.to_thread.run_sync(proc.wait, 60)
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert code == 1, text
    assert "nats-server exited 6 times within 60s" in text
    assert "Traceback" not in text


def _processes_of(home: Path) -> list[int]:
    """Live processes started for the stack under ``home`` (its runs' among them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            running = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
        except OSError:
            continue
        if running and f"SLUICE_HOME={home}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


async def test_a_run_in_flight_when_the_stack_gives_up_is_settled_on_the_next_start(
    tmp_path: Path,
) -> None:
    """The stack stops with a run in progress: its process goes with it, and the
    next `sluice dev` on the same data settles the run (its runner restarted and
    found no process), so nothing stays Running."""
    settings, log, proc = await serving_dev_stack(tmp_path)
    try:
        async with Client(settings) as c:
            run = await c.create_flow_run("sleepy/default", parameters={"seconds": 600})
            async for seen in c.watch_flow_run(run.id):
                if seen.state.type is StateType.RUNNING:
                    break
        await kill_until_the_stack_stops(settings, proc)
        assert await anyio.to_thread.run_sync(proc.wait, 60) == 1
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert "Traceback" not in text
    assert _processes_of(settings.home) == []

    proc = start_service("services.dev", settings, tmp_path / "dev2.log")
    try:
        await wait_until_serving(settings, proc)
        async with Client(settings) as c:
            with anyio.fail_after(60):
                async for seen in c.watch_flow_run(run.id):
                    if seen.state.is_terminal:
                        break
    finally:
        stop_dev_stack(proc, settings.home)
    assert seen.state.type is StateType.CRASHED, seen.state
    assert "runner dev restarted" in (seen.state.message or "")
