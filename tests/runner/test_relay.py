"""The relay between a flow-run process and its runner, on its bad paths.

A process may only report for the run it was started for (and subflows the
relay created for it); an unreadable frame is refused without ending the
relay; a process killed in the middle of a frame ends the relay cleanly; and
while the runner's NATS restarts, a proposal waits and then goes through.
The process's side is the real PipeReporter, or a raw socket where the
frames must be malformed on purpose.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from engine import states
from engine._core.reporting import FlowRunInfo, TaskRunInfo
from engine._stack import relay_frames as frames
from engine._stack.pipe_reporter import PipeReporter
from engine.client import Client
from engine.exceptions import Abort
from engine.runner._relay import Relay
from services.dev import NatsServer
from services.orchestrator import Orchestrator
from shared.errors import RequestError
from shared.messages import Decision, ProposedState
from shared.settings import Settings
from shared.states import StateType

pytestmark = pytest.mark.anyio


async def _claimed(client: Client, unique: str) -> tuple[str, int]:
    """A new agentless run, claimed as a runner would: (its id, the claim attempt)."""
    run = await client.create_flow_run(flow_name=f"relay-{unique}", agentless=True)
    reply = await client.propose_state(
        run.id, ProposedState(type=StateType.PENDING), runner="test-runner"
    )
    assert reply.status is Decision.ACCEPT
    return run.id, reply.attempt


@contextlib.asynccontextmanager
async def _relayed(
    client: Client, run_id: str, attempt: int
) -> AsyncIterator[tuple[Relay, PipeReporter]]:
    ours, theirs = socket.socketpair()
    relay = Relay(client, run_id, attempt, ours, runner="test-runner")
    reporter = PipeReporter(theirs).open()
    reporter.adopt(run_id, attempt)
    async with anyio.create_task_group() as tg:
        tg.start_soon(relay.serve)
        try:
            yield relay, reporter
        finally:
            await anyio.to_thread.run_sync(reporter.close)


def _task(flow_run_id: str) -> TaskRunInfo:
    return TaskRunInfo(
        id="t-1", name="t-0", task_name="t", state=states.Completed(), flow_run_id=flow_run_id
    )


async def _eventually_refused(relay: Relay, count: int) -> None:
    with anyio.fail_after(30):
        while True:
            if relay.refused >= count:
                return
            await anyio.sleep(0.02)


async def test_frames_for_another_run_are_refused(
    client: Client, unique: str, capfd: pytest.CaptureFixture[str]
) -> None:
    mine, attempt = await _claimed(client, unique)
    other, _ = await _claimed(client, unique)
    async with _relayed(client, mine, attempt) as (relay, reporter):
        with pytest.raises(RequestError, match="not the run this process was started for"):
            await anyio.to_thread.run_sync(reporter.propose, other, states.Running())
        info = FlowRunInfo(
            id="local", name="n", flow_name="sub", state=states.Pending(), parent_flow_run_id=other
        )
        with pytest.raises(RequestError, match="nor a subflow it created"):
            await anyio.to_thread.run_sync(reporter.flow_run_created, info)
        # A record names its run: one for another run is refused too.
        reporter.adopt(other, 1)
        await anyio.to_thread.run_sync(reporter.task_run_state, _task(other), states.Completed())
        await _eventually_refused(relay, 3)
        # The process's own run is served as before.
        reply = await anyio.to_thread.run_sync(reporter.propose, mine, states.Running())
        assert reply.status is Decision.ACCEPT
    assert "the runner refused a record" in capfd.readouterr().err
    assert (await client.read_flow_run(other)).state.type is StateType.PENDING


async def test_a_subflow_is_created_claimed_and_then_reported_for(
    client: Client, unique: str
) -> None:
    mine, attempt = await _claimed(client, unique)
    async with _relayed(client, mine, attempt) as (_, reporter):
        await anyio.to_thread.run_sync(reporter.propose, mine, states.Running())
        info = FlowRunInfo(
            id="local", name="n", flow_name="sub", state=states.Pending(), parent_flow_run_id=mine
        )
        sub = await anyio.to_thread.run_sync(reporter.flow_run_created, info)
        reply = await anyio.to_thread.run_sync(reporter.propose, sub.id, states.Running())
        assert reply.status is Decision.ACCEPT
    stored = await client.read_flow_run(sub.id)
    assert stored.parent_flow_run_id == mine and stored.state.type is StateType.RUNNING
    # Only subflows: a run with no parent is not the process's to create.
    async with _relayed(client, mine, attempt) as (_, reporter):
        orphan = FlowRunInfo(id="x", name="x", flow_name="x", state=states.Pending())
        with pytest.raises(Abort):
            await anyio.to_thread.run_sync(reporter.flow_run_created, orphan)


def _read_frame(sock: socket.socket) -> frames.ToProcess:
    header = sock.recv(frames.HEADER.size, socket.MSG_WAITALL)
    (length,) = frames.HEADER.unpack(header)
    return frames.decode_to_process(sock.recv(length, socket.MSG_WAITALL))


async def test_a_garbage_frame_is_refused_and_the_relay_goes_on(
    client: Client, unique: str
) -> None:
    mine, attempt = await _claimed(client, unique)
    ours, theirs = socket.socketpair()
    relay = Relay(client, mine, attempt, ours, runner="test-runner")
    with theirs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay.serve)
            theirs.sendall(frames.HEADER.pack(7) + b"\xc1garbag")
            refused = await anyio.to_thread.run_sync(_read_frame, theirs)
            assert isinstance(refused, frames.Refused) and refused.id == 0
            assert "unreadable frame" in refused.message
            propose = frames.Propose(
                id=5,
                run_id=mine,
                state=ProposedState(type=StateType.RUNNING),
                transition_id="00000000-0000-4000-8000-000000000005",
            )
            theirs.sendall(frames.encode_frame(propose))
            answer = await anyio.to_thread.run_sync(_read_frame, theirs)
            assert isinstance(answer, frames.ProposeResult) and answer.id == 5
            assert answer.reply.status is Decision.ACCEPT
            theirs.shutdown(socket.SHUT_WR)
    assert relay.refused == 1


HALF_A_FRAME = """
import os, signal, socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
sock.sendall(bytes.fromhex(sys.argv[2]))
os.kill(os.getpid(), signal.SIGKILL)
"""


async def test_a_process_killed_mid_frame_ends_its_relay(
    client: Client, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    mine, attempt = await _claimed(client, unique)
    ours, theirs = socket.socketpair()
    relay = Relay(client, mine, attempt, ours, runner="test-runner")
    frame = frames.encode_frame(
        frames.Propose(
            id=1,
            run_id=mine,
            state=ProposedState(type=StateType.COMPLETED),
            transition_id="00000000-0000-4000-8000-000000000001",
        )
    )
    with theirs:
        process = await anyio.open_process(
            [sys.executable, "-c", HALF_A_FRAME, str(theirs.fileno()), frame[:-5].hex()],
            pass_fds=(theirs.fileno(),),
            stdin=None,
            stdout=None,
            stderr=None,
        )
    with anyio.fail_after(30):
        await relay.serve()  # returns: the process is gone
    assert await process.wait() == -9
    assert "hung up in the middle of a frame" in caplog.text
    # Half a proposal is no proposal.
    assert (await client.read_flow_run(mine)).state.type is StateType.PENDING


async def test_a_run_reports_through_a_nats_restart(
    own_server: NatsServer, tmp_path: Path, unique: str
) -> None:
    """The relay waits out its connection's outage: the process's proposal
    goes through once NATS is back, with the log line sent before it."""
    settings = Settings(nats_url=own_server.url, home=tmp_path / "home", request_timeout=1.0)
    async with Orchestrator(settings, grace=1), Client(settings) as client:
        mine, attempt = await _claimed(client, unique)
        async with _relayed(client, mine, attempt) as (_, reporter):
            await anyio.to_thread.run_sync(reporter.propose, mine, states.Running())
            own_server.kill()
            reporter.log_line(mine, 20, f"said while NATS was down at {datetime.now(UTC)}")
            async with anyio.create_task_group() as tg:
                done: list[object] = []

                async def finish() -> None:
                    done.append(
                        await anyio.to_thread.run_sync(reporter.propose, mine, states.Completed())
                    )

                tg.start_soon(finish)
                await anyio.sleep(1.5)  # the proposal is waiting for the stack
                assert not done
                await anyio.to_thread.run_sync(own_server.start)
        reply = done[0]
        assert getattr(reply, "status", None) is Decision.ACCEPT
        run = await client.read_flow_run(mine)
        assert run.state.type is StateType.COMPLETED
        logs = [line.message async for line in client.logs(mine)]
        assert any("said while NATS was down" in message for message in logs)
