"""Cancels through faults: the watcher down when the cancel comes, a runner frozen."""

from __future__ import annotations

import signal

import pytest

from engine.client import Client
from shared.settings import Settings
from shared.states import StateType

from ._history import History
from ._stack import Stack, until, verify, wait_heartbeat
from .test_runner_faults import alive, create, pids, register

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


async def test_a_cancel_made_while_the_watcher_is_down_is_done_when_it_starts(
    stack: Stack, fast: Settings, history: History
) -> None:
    await stack.orchestrator()
    watcher = stack.service("services.cancellation_watcher")
    async with Client(fast) as c:
        dep = await register(c, "faulty", limit=1)
        r = stack.runner("r", dep)
        await wait_heartbeat(fast, "r", r)
        run = await create(c, history, "cancel-me", sleep=600)
        running = await until(c, run.id, StateType.RUNNING)
        flow_pid = pids(running)[0]
        watcher.kill()
        cancelling = await history.call("cancel", None, lambda: c.cancel_flow_run(run.id))
        assert cancelling.state.type is StateType.CANCELLING
        assert (await c.read_flow_run(run.id)).state.type is StateType.CANCELLING
        assert alive(flow_pid)  # nobody carried the cancel out yet
        watcher.start()  # its reconciliation finds the Cancelling run
        final = await until(c, run.id, StateType.CANCELLED)
        assert not alive(flow_pid)  # Cancelled means the process is gone
        await verify(fast, history, [dep])
    assert final.state.message == "the flow-run process was stopped"


async def test_a_cancel_of_a_frozen_runners_run_waits_for_its_lease(
    stack: Stack, fast: Settings, history: History
) -> None:
    """The runner cannot answer the kill request; the run stays Cancelling until
    the runner's lease lapses (its process fenced itself), then ends Cancelled."""
    await stack.orchestrator()
    stack.service("services.cancellation_watcher")
    async with Client(fast) as c:
        dep = await register(c, "faulty", limit=1)
        r = stack.runner("frozen", dep)
        await wait_heartbeat(fast, "frozen", r)
        run = await create(c, history, "cancel-me", sleep=600)
        running = await until(c, run.id, StateType.RUNNING)
        flow_pid = pids(running)[0]
        r.signal(signal.SIGSTOP)
        try:
            await history.call("cancel", None, lambda: c.cancel_flow_run(run.id))
            final = await until(c, run.id, StateType.CANCELLED)
            assert not alive(flow_pid), "Cancelled while the flow process was alive"
        finally:
            r.signal(signal.SIGCONT)
        await verify(fast, history, [dep])
    message = final.state.message or ""
    assert "runner frozen stopped heartbeating" in message
    assert "lease lapsed" in message
    assert "cannot be guaranteed" not in message
