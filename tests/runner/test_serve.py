"""`flow.serve()` in its own process: the panel, real flow runs, and pause on shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from engine.client import Client
from services.orchestrator import Orchestrator
from shared.errors import SluiceError
from shared.settings import Settings
from shared.states import StateType

from .._procs import service_env
from ._script import ROOT

pytestmark = pytest.mark.anyio

FLOW = """
from engine import flow, get_run_logger, task

@task
def double(x: int) -> int:
    return 2 * x

@flow(name="{name}")
def doubler(x: int = 1) -> int:
    get_run_logger().info("doubling %d", x)
    return double(x)

if __name__ == "__main__":
    doubler.serve("served", limit=2)
"""


async def test_serve_runs_flows_and_pauses_on_shutdown(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str, tmp_path: Path
) -> None:
    name = f"doubler-{unique}"
    script = tmp_path / "doubler.py"
    script.write_text(textwrap.dedent(FLOW.format(name=name)))
    env = service_env(settings) | {"PYTHONPATH": str(ROOT)}
    proc = await anyio.open_process(
        [sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE
    )
    try:
        while True:  # the deployment appears once serve() registered it
            try:
                deployment = await client.read_deployment(f"{name}/served")
                break
            except SluiceError:
                await anyio.sleep(0.1)
        assert not deployment.paused
        assert deployment.entrypoint == "doubler.py:doubler"
        run = await client.create_flow_run(f"{name}/served", parameters={"x": 21})
        final = await client.wait_for_flow_run(run.id)
        assert final.state.type is StateType.COMPLETED, final.state.message
        assert final.state.data == 42
        assert "doubling 21" in [r.message async for r in client.logs(run.id)]
    finally:
        os.kill(proc.pid, signal.SIGINT)
        code = await proc.wait()
        assert proc.stdout is not None
        printed = (await proc.stdout.receive()).decode()
    assert code == 0
    assert "serving 1 deployment" in printed
    assert f"sluice deployment run '{name}/served'" in printed
    assert (await client.read_deployment(f"{name}/served")).paused
