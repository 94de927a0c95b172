"""The fork-server flow runner: real engine runs forked from a warm process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.client import Client
from engine.runner import Runner
from engine.runner._fork import ForkServerFlowRunner
from services.cancellation_watcher import CancellationWatcher
from services.orchestrator import Orchestrator
from shared.settings import Settings
from shared.states import StateType

from ._flows import completed_run, deploy_flows
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
            pids.append((await completed_run(client, f"{unique}-pid/d")).state.data)
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


MODULES = """
import sys
from engine import flow

@flow(name="{name}-modules")
def modules() -> list[str]:
    return sorted(sys.modules)
"""


async def test_a_forked_run_imports_nothing_but_its_flow(
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A module first imported in a forked run is imported again by every run
    (ctypes and argparse cost ~5 ms of CPU each time), and even an import of a
    loaded module touches pages a fork must copy: the server imports it all
    before it forks (engine.runner._standby_run). Checked on a real forked run:
    the modules its flow sees, against those of a fork server ready to fork."""
    import sys

    script = "import sys, engine.runner._forkserver as s; s.prepare(); print(' '.join(sys.modules))"
    out = await anyio.run_process([sys.executable, "-c", script])
    server = set(out.stdout.decode().split()) | {"runpy"}  # the real one is started with -m
    queue = f"q{unique}"
    await deploy_flows(
        client, tmp_path, MODULES.format(name=unique), {f"{unique}-modules": "modules"}, queue=queue
    )
    monkeypatch.setenv("SLUICE_NATS_URL", settings.nats_url)
    r = Runner(
        name=f"mods-{unique}", settings=settings, queue=queue, flow_runner=ForkServerFlowRunner()
    )
    async with running(r):
        done = await completed_run(client, f"{unique}-modules/d")
    imported = [m for m in done.state.data if m not in server]
    assert [m for m in imported if not m.startswith("sluice_flows_")] == [], imported


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


@contextlib.contextmanager
def fork_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], socket.socket]]:
    """A real fork server (no spares) and the runner's connection to it."""
    path = tmp_path / "fork.sock"
    server = subprocess.Popen(
        [sys.executable, "-m", "engine.runner._forkserver", str(path), "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        while not path.exists():
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.01)
        conn.connect(str(path))
        yield server, conn
    finally:
        conn.close()
        if server.poll() is None:
            server.kill()
        server.wait()
        if server.stderr is not None:
            server.stderr.close()


def spawn_waiting_run(
    conn: socket.socket, relay: socket.socket, lease: Path, deadline: float
) -> tuple[int, Any]:
    """Have the server fork a run whose first request (reading its run) is
    never answered (we hold the other end of ``relay``), with ``lease`` holding
    ``deadline``; (its pid, a reader of the server's messages, to close before
    hanging up)."""
    lease.write_text(repr(deadline))
    theirs = relay
    request = {
        "spawn": "t1",
        "env": {},
        "cwd": str(lease.parent),
        "assignment": json.dumps({"run_id": "r1", "attempt": 1}),
        "lease": str(lease),
    }
    socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [theirs.fileno()])
    theirs.close()
    reader = conn.makefile("r")
    spawned = json.loads(reader.readline())
    assert "pid" in spawned, spawned
    return int(spawned["pid"]), reader


def test_the_fork_server_fences_a_run_whose_lease_lapses(tmp_path: Path) -> None:
    """A forked run starts no watchdog thread of its own: the server reads its
    lease file and SIGKILLs it once the deadline passes without a renewal.
    Here the run waits for ever on a relay that never answers, as a run whose
    runner is frozen would."""
    ours, theirs = socket.socketpair()
    with ours, fork_server(tmp_path) as (server, conn):
        pid, reader = spawn_waiting_run(conn, theirs, tmp_path / "lease", time.monotonic() + 1)
        exited = json.loads(reader.readline())
        assert exited == {"exited": pid, "code": -signal.SIGKILL}
        reader.close()
        conn.close()  # the server exits when the runner hangs up
        assert server.wait(timeout=60) == 0
        assert server.stderr is not None
        assert "was lost (no renewal came in time)" in server.stderr.read()


def test_a_fork_server_whose_runner_died_stays_to_fence_its_runs(tmp_path: Path) -> None:
    """A SIGKILLed runner's fork server gives its runs SIGTERM, as their
    parent-death signal would; one that does not end (here: frozen, so the
    signal waits) is SIGKILLed at its lease deadline, and only then does the
    server go. Were it to go at once, nobody would fence that run."""
    ours, theirs = socket.socketpair()
    with ours, fork_server(tmp_path) as (server, conn):
        pid, reader = spawn_waiting_run(conn, theirs, tmp_path / "lease", time.monotonic() + 2)
        os.kill(pid, signal.SIGSTOP)
        reader.close()
        conn.close()  # the runner is gone
        assert server.wait(timeout=60) == 0
        assert server.stderr is not None
        assert "was lost (no renewal came in time)" in server.stderr.read()
        with contextlib.suppress(ChildProcessError):
            assert not alive(pid)  # reaped by the server before it went
