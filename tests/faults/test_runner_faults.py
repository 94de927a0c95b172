"""Runner faults: SIGKILL mid-run, SIGSTOP past its lease, a flow process that
ignores SIGTERM with a grandchild, and a runner cut off from NATS."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import anyio
import pytest

from engine.client import Client
from shared.messages import ProposedState, RegisterDeployment
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import StateType

from ._history import History
from ._proxy import BlackHoleProxy
from ._stack import Stack, until, verify, wait_heartbeat

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


async def register(c: Client, flow: str, limit: int | None = None) -> str:
    dep = await c.register_deployment(
        RegisterDeployment(
            name="d", flow_name=flow, entrypoint="x.py:f", path=".", concurrency_limit=limit
        )
    )
    return dep.id


async def create(c: Client, history: History, key: str, **params: object) -> FlowRun:
    return await history.call(
        "create",
        key,
        lambda: c.create_flow_run("faulty/d", parameters=params, idempotency_key=key),
        lambda r: r.id,
    )


def pids(run: FlowRun) -> list[int]:
    """``pid N [grandchild M]`` in a Running state's message."""
    words = (run.state.message or "").split()
    return [int(w) for w in words if w.isdigit()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


async def gone(pid: int, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while alive(pid):  # noqa: ASYNC110 - polling another process's life
            await anyio.sleep(0.05)


async def test_runner_sigkilled_mid_run(
    stack: Stack, fast: Settings, history: History, tmp_path: Path
) -> None:
    """Runs of the killed runner end Crashed, its waiting ones go to the other runner.

    The limit is judged on the bodies' journal: the killed runner's runs still
    *say* Running until the watcher marks them, while their slots' leases may
    already have lapsed and the survivor started others (1 in 5 here on a busy
    host); what the limit promises is that no more bodies run at once."""
    journal = tmp_path / "journal"
    await stack.orchestrator()
    stack.service("services.cancellation_watcher")
    async with Client(fast) as c:
        dep = await register(c, "faulty", limit=3)
        doomed, survivor = stack.runner("doomed", dep, limit=3), stack.runner("survivor", dep, 3)
        await wait_heartbeat(fast, "doomed", doomed)
        await wait_heartbeat(fast, "survivor", survivor)
        runs = [await create(c, history, f"k{i}", sleep=3, journal=str(journal)) for i in range(12)]
        victim = None
        while victim is None:
            for r in runs:
                now = await c.read_flow_run(r.id)
                if now.state.type is StateType.RUNNING and now.runner == "doomed":
                    victim = now
            await anyio.sleep(0.1)
        doomed.kill()
        await gone(pids(victim)[0])  # its parent-death signal ends the flow process
        finals = [await c.wait_for_flow_run(r.id) for r in runs]
        await verify(fast, history, [dep], journal=journal)
    crashed = [r for r in finals if r.state.type is StateType.CRASHED]
    assert victim.id in {r.id for r in crashed}
    assert all("runner doomed stopped heartbeating" in (r.state.message or "") for r in crashed)
    assert {r.state.type for r in finals} <= {StateType.COMPLETED, StateType.CRASHED}
    assert any(r.runner == "survivor" and r.state.type is StateType.COMPLETED for r in finals)


async def test_runner_sigstopped_past_its_lease(
    stack: Stack, fast: Settings, history: History
) -> None:
    """The stale owner wakes up while a new owner runs the run: its reports are refused."""
    await stack.orchestrator()
    stack.service("services.cancellation_watcher")
    async with Client(fast) as c:
        dep = await register(c, "faulty", limit=1)
        sleepy = stack.runner("sleepy", dep, limit=1)
        await wait_heartbeat(fast, "sleepy", sleepy)
        run = await create(c, history, "only", sleep=6)
        first = await until(c, run.id, StateType.RUNNING)
        assert first.runner == "sleepy"
        sleepy.signal(signal.SIGSTOP)  # its flow process (own session) runs on
        crashed = await until(c, run.id, StateType.CRASHED)
        assert "runner sleepy stopped heartbeating" in (crashed.state.message or "")
        # Retried, the run goes to a new owner (the slot came back with the crash).
        await history.call(
            "propose",
            "retry",
            lambda: c.propose_state(
                run.id, ProposedState(type=StateType.SCHEDULED, name="AwaitingRetry"), retry=True
            ),
        )
        fresh = stack.runner("fresh", dep, limit=1)
        second = await until(c, run.id, StateType.RUNNING)
        assert (second.runner, second.attempt) == ("fresh", 2)
        sleepy.signal(signal.SIGCONT)  # the stale runner and its process now report
        await gone(pids(first)[0])  # the stale process finished and its report was refused
        final = await c.wait_for_flow_run(run.id)
        assert fresh.alive() and sleepy.alive()
        await verify(fast, history, [dep])
    assert final.state.type is StateType.COMPLETED
    assert (final.runner, final.attempt) == ("fresh", 2)
    assert final.state.message == f"done by pid {pids(second)[0]}"


async def test_cancel_a_process_that_ignores_sigterm_and_has_a_grandchild(
    stack: Stack, fast: Settings, history: History
) -> None:
    await stack.orchestrator()
    stack.service("services.cancellation_watcher")
    async with Client(fast) as c:
        dep = await register(c, "faulty")
        r = stack.runner("r", dep)
        await wait_heartbeat(fast, "r", r)
        run = await create(c, history, "stubborn", sleep=600, ignore_term=True, grandchild=True)
        running = await until(c, run.id, StateType.RUNNING)
        flow_pid, grandchild = pids(running)
        await history.call("cancel", None, lambda: c.cancel_flow_run(run.id))
        final = await until(c, run.id, StateType.CANCELLED)
        await gone(flow_pid)
        await gone(grandchild)
        await verify(fast, history, [dep])
    assert final.state.message == "the flow-run process was stopped"


async def test_a_killed_runners_stubborn_process_fences_itself(
    stack: Stack, fast: Settings, history: History
) -> None:
    """SIGKILLed runner, flow process ignoring SIGTERM (so the parent-death
    signal does not end it): with nobody renewing its lease, it ends itself and
    its grandchild at its fencing deadline, before the run is marked Crashed.
    (A process without a lease file is killed by the runner's next start:
    tests/runner/test_watcher.py.)"""
    await stack.orchestrator()
    stack.service("services.cancellation_watcher")
    flow_pid = grandchild = 0
    try:
        async with Client(fast) as c:
            dep = await register(c, "faulty")
            r = stack.runner("phoenix", dep)
            await wait_heartbeat(fast, "phoenix", r)
            run = await create(c, history, "stubborn", sleep=600, ignore_term=True, grandchild=True)
            running = await until(c, run.id, StateType.RUNNING)
            flow_pid, grandchild = pids(running)
            r.kill()
            final = await until(c, run.id, StateType.CRASHED)
            assert "runner phoenix stopped heartbeating" in (final.state.message or "")
            assert "lease was lost" in (final.state.message or "")
            # Fenced before the mark: both ended themselves at the lease deadline.
            assert not alive(flow_pid), "the flow process outlived its lease"
            assert not alive(grandchild), "its grandchild outlived the lease"
            again = stack.runner("phoenix", dep)
            await wait_heartbeat(fast, "phoenix", again)
            await verify(fast, history, [dep], timeout=10)
    finally:
        for pid in (flow_pid, grandchild):
            with contextlib.suppress(ProcessLookupError):
                if pid:
                    os.kill(pid, signal.SIGKILL)


async def test_runner_cut_off_from_nats(
    stack: Stack, fast: Settings, history: History, own_nats: object
) -> None:
    """Black-holed: the runner kills its own child when it cannot renew its lease,
    the run ends Crashed, and once the network heals the runner takes work again."""
    await stack.orchestrator()
    stack.service("services.cancellation_watcher")
    async with (
        BlackHoleProxy("127.0.0.1", int(fast.nats_url.rsplit(":", 1)[1])) as proxy,
        Client(fast) as c,
    ):
        dep = await register(c, "faulty", limit=2)
        island = stack.runner("island", dep, limit=2, SLUICE_NATS_URL=proxy.url)
        await wait_heartbeat(fast, "island", island)
        run = await create(c, history, "cut", sleep=600)
        running = await until(c, run.id, StateType.RUNNING)
        flow_pid = pids(running)[0]
        proxy.blackhole()
        crashed = await until(c, run.id, StateType.CRASHED)
        await gone(flow_pid)  # killed by its own runner, which could not renew its lease
        assert island.alive()
        assert "runner island stopped heartbeating" in (crashed.state.message or "")
        proxy.heal()
        after = [await create(c, history, f"after{i}", sleep=0.2) for i in range(3)]
        finals = [await c.wait_for_flow_run(r.id) for r in after]
        await verify(fast, history, [dep])
    assert all(r.state.type is StateType.COMPLETED and r.runner == "island" for r in finals)
    assert proxy.dropped > 0
