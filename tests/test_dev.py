"""The embedded stack as a user starts it: `python -m services.dev` (what `sluice dev` execs)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.client import Client
from services.dev import free_port
from shared.messages import RegisterDeployment
from shared.settings import Settings

from ._procs import service_env, start_service, wait_until_serving

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
