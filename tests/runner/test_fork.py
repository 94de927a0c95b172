"""The fork-server flow runner: real engine runs forked from a warm process."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import anyio
import pytest

from engine.client import Client
from engine.runner import Runner
from engine.runner._fork import ForkServerFlowRunner
from services.cancellation_watcher import CancellationWatcher
from services.orchestrator import Orchestrator
from shared.settings import Settings
from shared.states import StateType

from ._flows import deploy_flows
from .test_runner import running
from .test_watcher import alive, until

pytestmark = pytest.mark.anyio

FLOWS = """
import os, time
from engine import flow, get_run_logger

@flow(name="{name}-pid")
def pid() -> int:
    get_run_logger().info("in %d", os.getpid())
    return os.getpid()

@flow(name="{name}-sleep")
def sleep(seconds: float = 120) -> None:
    time.sleep(seconds)
"""


async def test_forked_runs_complete_and_cancel(
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = f"q{unique}"
    flows = {f"{unique}-pid": "pid", f"{unique}-sleep": "sleep"}
    await deploy_flows(client, tmp_path, FLOWS.format(name=unique), flows, queue=queue)
    monkeypatch.setenv("SLUICE_NATS_URL", settings.nats_url)
    r = Runner(
        name=f"fork-{unique}",
        settings=settings,
        queue=queue,
        flow_runner=ForkServerFlowRunner(),
        kill_grace=1.0,
    )
    async with CancellationWatcher(settings, kill_grace=1.0), running(r):
        pids = []
        for _ in range(3):
            run = await client.create_flow_run(f"{unique}-pid/d")
            done = await client.wait_for_flow_run(run.id)
            assert done.state.type is StateType.COMPLETED, done.state.message
            pids.append(done.state.data)
        assert len(set(pids)) == 3  # a process of its own for every run
        assert os.getpid() not in pids

        slow = await client.create_flow_run(f"{unique}-sleep/d")
        await until(client, slow.id, StateType.RUNNING)
        pid = int(r._active[slow.id].process.ident.split()[1])
        await client.cancel_flow_run(slow.id)
        final = await until(client, slow.id, StateType.CANCELLED)
    assert final.state.type is StateType.CANCELLED
    with contextlib.suppress(ChildProcessError):
        assert not alive(pid)


PARENT = """
import time
from engine import flow

@flow(name="{name}-child")
def child() -> None:
    time.sleep(120)

@flow(name="{name}-parent")
def parent() -> None:
    child()
"""


async def test_cancelling_a_parent_stops_its_running_subflow(
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = f"q{unique}"
    source = PARENT.format(name=unique)
    flows = {f"{unique}-parent": "parent"}
    await deploy_flows(client, tmp_path, source, flows, file="nested.py", queue=queue)
    monkeypatch.setenv("SLUICE_NATS_URL", settings.nats_url)
    r = Runner(
        name=f"nest-{unique}",
        settings=settings,
        queue=queue,
        flow_runner=ForkServerFlowRunner(),
        kill_grace=1.0,
    )
    async with CancellationWatcher(settings, kill_grace=1.0), running(r):
        run = await client.create_flow_run(f"{unique}-parent/d")
        await until(client, run.id, StateType.RUNNING)
        while True:  # the subflow's own run appears, linked to its parent
            page = await client.list_flow_runs(parent_flow_run_id=run.id)
            if page.flow_runs and page.flow_runs[0].state.type is StateType.RUNNING:
                sub = page.flow_runs[0]
                break
            await anyio.sleep(0.05)
        pid = int(r._active[run.id].process.ident.split()[1])
        await client.cancel_flow_run(run.id)
        parent_final = await until(client, run.id, StateType.CANCELLED)
        sub_final = await until(client, sub.id, StateType.CANCELLED)
    assert parent_final.state.type is StateType.CANCELLED
    assert sub_final.flow_name == f"{unique}-child"
    with contextlib.suppress(ChildProcessError):
        assert not alive(pid)


def test_the_fork_server_has_imported_everything_a_forked_run_imports() -> None:
    """A module first imported in a forked run is imported again by every run
    (ctypes and argparse cost ~5 ms of CPU each time): the server imports
    them all before it forks. Checked in a fresh interpreter, by executing
    the imports of the function a forked child runs."""
    import ast
    import inspect
    import subprocess
    import sys
    import textwrap

    from engine.runner import _standby as _standby

    imports = []
    for function in (_standby.run_standby, _standby._execute):
        body = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
        assert isinstance(body, ast.FunctionDef)
        imports += [
            ast.unparse(node).replace("from .", "from engine.")
            for node in ast.walk(body)
            if isinstance(node, ast.Import | ast.ImportFrom)
        ]
    assert imports, "run_standby imports lazily; this test checks those imports"
    script = "\n".join(
        [
            "import sys",
            "import engine.runner._forkserver",
            "before = set(sys.modules)",
            *imports,
            "print(sorted(set(sys.modules) - before))",
        ]
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_the_fork_server_socket_is_seen_only_once_it_listens(tmp_path: Path) -> None:
    """The runner connects the moment the socket file exists (issue 17, item 5):
    a watcher that connects whenever a path appears is never refused."""
    import socket
    import threading

    from engine.runner._forkserver import listen

    paths = [tmp_path / f"s{i}.sock" for i in range(200)]
    refused: list[str] = []
    done = threading.Event()

    def connect_as_soon_as_seen() -> None:
        for path in paths:
            while not path.exists():
                if done.is_set():
                    return
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(str(path))
                except ConnectionRefusedError:
                    refused.append(str(path))

    watcher = threading.Thread(target=connect_as_soon_as_seen)
    watcher.start()
    listeners = []
    try:
        for path in paths:
            listeners.append(listen(str(path)))
    finally:
        done.set()
        watcher.join(60)
        for listener in listeners:
            listener.close()
    assert refused == []
    assert not list(tmp_path.glob("*.tmp"))  # the private names were renamed away
