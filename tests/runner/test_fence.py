"""Fencing (engine.runner._fence): the deadline arithmetic, a real process that
ends itself (and its process group) when its lease file is not renewed, and a
runner that kills a run the stack declared lost."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import msgspec
import pytest

from engine.client import Client
from engine.runner._fence import LEASE_FILE_ENV, Fence, margin, read_deadline
from services.orchestrator import Orchestrator
from shared.messages import Decision, ProposedState
from shared.settings import Settings
from shared.states import StateType

from ._script import ROOT
from .test_runner import deployment, runner, running, until_running


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_run_must_stop_a_margin_before_the_earlier_of_its_leases() -> None:
    clock = FakeClock()
    fence = Fence(clock)
    assert not fence.holds()  # no claim before a first renewal
    fence.renewed(sent=100.0, lease=4.0, runs=[])
    assert fence.holds()
    assert margin(4.0) == 1.0
    fence.claimed("r", sent=101.0, slot_lease=2.0)  # a short first slot lease
    assert fence.deadline("r") == 101.0 + 2.0 - 1.0
    fence.renewed(sent=101.5, lease=4.0, runs=["r"])  # a heartbeat naming the run
    assert fence.deadline("r") == 101.5 + 4.0 - 1.0
    fence.claimed("free", sent=101.0, slot_lease=None)  # no limit: the runner's lease only
    assert fence.deadline("free") == fence.until - 1.0
    clock.now = 104.5
    assert fence.expired("r") and not fence.holds()


def test_a_renewal_after_the_deadline_does_not_revive_a_run() -> None:
    """Its slot may have lapsed and gone to someone else meanwhile."""
    clock = FakeClock()
    fence = Fence(clock)
    fence.renewed(sent=100.0, lease=2.0, runs=[])
    fence.claimed("r", sent=100.0, slot_lease=2.0)
    clock.now = 101.6  # past 100 + 2 - 0.5
    fence.renewed(sent=101.5, lease=2.0, runs=["r"])
    assert fence.expired("r")
    assert fence.holds()  # the runner itself may claim again
    fence.forget("r")
    fence.claimed("r", sent=101.6, slot_lease=2.0)  # a new claim starts afresh
    assert not fence.expired("r")


def test_the_lease_file_follows_renewals_and_goes_with_the_run() -> None:
    clock = FakeClock()
    fence = Fence(clock)
    try:
        fence.renewed(sent=100.0, lease=2.0, runs=[])
        fence.claimed("r", sent=100.0, slot_lease=None)
        path = fence.lease_file("r")
        assert read_deadline(str(path)) == 101.5
        fence.renewed(sent=101.0, lease=2.0, runs=["r"])
        assert read_deadline(str(path)) == 102.5
        fence.forget("r")
        assert not path.exists()
        assert not path.parent.exists()  # the last run took the folder with it
    finally:
        fence.close()


CHILD = """
import os, subprocess, sys, time
from engine.runner._fence import watch_lease
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(grandchild.pid, watch_lease(), flush=True)
time.sleep(600)
"""


def start_child(lease_file: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env={**os.environ, LEASE_FILE_ENV: str(lease_file), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # as a runner starts it: it leads its process group
    )
    assert proc.stdout is not None
    grandchild, watching = proc.stdout.readline().split()
    assert watching == "True"
    return proc, int(grandchild)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
    except OSError:
        return True


def test_a_process_whose_lease_is_not_renewed_ends_itself_and_its_group(tmp_path: Path) -> None:
    lease = tmp_path / "lease"
    lease.write_text(repr(time.monotonic() + 3.0))
    proc, grandchild = start_child(lease)
    try:
        assert proc.wait(timeout=60) == -signal.SIGKILL
        assert proc.stderr is not None
        assert "lease was lost (no renewal came in time)" in proc.stderr.read()
        deadline = time.monotonic() + 30
        while not gone(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(grandchild)
    finally:
        for pid in (proc.pid, grandchild):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_a_renewed_process_runs_on(tmp_path: Path) -> None:
    lease = tmp_path / "lease"
    lease.write_text(repr(time.monotonic() + 1.0))
    proc, grandchild = start_child(lease)
    try:
        until = time.monotonic() + 3.0  # three times the first deadline, renewed throughout
        while time.monotonic() < until:
            (tmp_path / "tmp").write_text(repr(time.monotonic() + 1.0))
            os.replace(tmp_path / "tmp", lease)
            time.sleep(0.1)
            assert proc.poll() is None
        lease.unlink()  # the runner is done with it: the process must not run on
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        for pid in (proc.pid, grandchild):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_without_a_readable_lease_file_nothing_is_watched(tmp_path: Path) -> None:
    from engine.runner._fence import watch_lease

    assert watch_lease({}) is False
    assert watch_lease({LEASE_FILE_ENV: str(tmp_path / "missing")}) is False


@pytest.fixture(autouse=True)
def _no_stray_lease_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LEASE_FILE_ENV, raising=False)


# --- a runner told that a run it holds was declared lost --------------------------------
@pytest.mark.anyio
async def test_a_runner_kills_a_run_the_stack_declared_lost(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    """Someone else marks a live runner's run Crashed (as a watcher that judged
    the runner lost would): its next heartbeat's reply names the run, and the
    runner kills the process at once instead of letting the body run on."""
    fast = msgspec.structs.replace(settings, heartbeat_interval=0.5)
    r = runner(fast, name=f"r-{unique}", heartbeat_seconds=0.5)
    await r.aadd_deployment(deployment(f"f{unique}"))
    async with running(r):
        run = await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 600})
        await until_running(client, run.id)
        held = await client.read_flow_run(run.id)
        pid = int((held.state.message or "").split()[-1])
        reply = await client.propose_state(
            run.id,
            ProposedState(type=StateType.CRASHED, message="declared lost elsewhere"),
            attempt=held.attempt,
            expected=StateType.RUNNING,
        )
        assert reply.status is Decision.ACCEPT
        with anyio.fail_after(60):
            while not gone(pid):  # noqa: ASYNC110 - polling another process's life
                await anyio.sleep(0.05)
    final = await client.read_flow_run(run.id)
    assert final.state.message == "declared lost elsewhere"  # the runner's report changed nothing


def test_the_server_never_expires_a_lease_before_its_holder_stops() -> None:
    """TTLs are whole seconds, rounded up: the server's expiry (no earlier than
    send + TTL) comes after the holder's fencing deadline, whatever the lease."""
    from services.orchestrator._slots import ttl_seconds

    for lease in (0.2, 1.0, 1.4, 2.5, 7.3, 10.0, 20.0):
        fence = Fence(FakeClock())
        fence.renewed(sent=100.0, lease=float(ttl_seconds(lease)), runs=[])
        assert ttl_seconds(lease) >= lease
        assert fence.until - fence.margin < 100.0 + ttl_seconds(lease)
