"""``sluice run --watch`` and ``sluice flow-run watch``: the CLI follows a run to its end.

The run is moved on by this test, as an engine would (``tests/_cli.py``'s
``move``), against the module-scoped stack built there.
"""

from __future__ import annotations

import json
import subprocess
import sys

import anyio
import pytest

from engine.client import Client
from engine.sync import SyncClient
from shared.messages import Decision, ProposedState
from shared.states import StateType

from . import _cli
from ._cli import INSPECT_HINT, WATCHED_STATE, Stack, assert_fails, log, move, sluice

# The module-scoped stack and the fixtures built on it, (tests/_cli.py).
stack = _cli.stack
client = _cli.client
flow = _cli.flow


@pytest.mark.parametrize(("final", "exit_code"), [(StateType.COMPLETED, 0), (StateType.FAILED, 1)])
def test_run_watch_follows_the_run_to_its_end(
    stack: Stack, flow: str, final: StateType, exit_code: int
) -> None:
    """The CLI runs as its own process; once it shows the run's first state,
    this thread moves the run on, as an engine would."""
    command = [sys.executable, "-m", "engine.cli", "run", "--name", flow, "--watch"]
    with subprocess.Popen(
        command,
        env=stack.process_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        seen: list[str] = []
        run_id = None
        for line in proc.stdout:  # pytest-timeout guards a CLI that never prints
            seen.append(line)
            if match := INSPECT_HINT.search(line):
                run_id = match[1]
            if WATCHED_STATE.match(line):
                break
        assert run_id is not None, "".join(seen)
        anyio.run(move, stack.settings, run_id, [StateType.RUNNING, final], ["hello from the flow"])
        rest, errors = proc.communicate(timeout=60)
    output = "".join(seen) + rest
    assert proc.returncode == exit_code, output + errors
    assert "Traceback" not in errors
    watched = output[output.index("Watching") :]
    for fragment in ("Running", "hello from the flow", f"to {final}", final.value.title()):
        assert fragment in watched


def test_run_watch_json_prints_the_final_run(stack: Stack, client: SyncClient, flow: str) -> None:
    """With --json, --watch prints one document: the run as it ended."""
    key = f"watch-{flow}"
    run = client.create_flow_run(flow, idempotency_key=key)
    anyio.run(move, stack.settings, run.id, [StateType.RUNNING, StateType.COMPLETED])
    result = sluice(stack, "run", "--name", flow, "--idempotency-key", key, "--watch", "--json")
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout)
    assert final["id"] == run.id
    assert final["state"]["type"] == "COMPLETED"


# --- flow-run watch -----------------------------------------------------------------------------
@pytest.mark.parametrize(("final", "exit_code"), [(StateType.COMPLETED, 0), (StateType.FAILED, 1)])
def test_watch_shows_every_state_from_the_history(
    stack: Stack, client: SyncClient, flow: str, final: StateType, exit_code: int
) -> None:
    """The run passed Pending (claimed by a runner) long before the watch began."""
    run = client.create_flow_run(flow)

    async def claim_and_finish() -> None:
        async with Client(stack.settings) as c:
            reply = await c.propose_state(
                run.id,
                ProposedState(type=StateType.PENDING, message="claimed by runner runner-x"),
                runner="runner-x",
                attempt=0,
            )
            assert reply.status is Decision.ACCEPT, reply
            for state in (StateType.RUNNING, final):
                reply = await c.propose_state(run.id, ProposedState(type=state), attempt=1)
                assert reply.status is Decision.ACCEPT, reply

    anyio.run(claim_and_finish)
    log(stack.settings, run.id, [(20, "a line of the flow")])
    result = sluice(stack, "flow-run", "watch", run.id)
    assert result.exit_code == exit_code, result.output
    out = result.stdout
    order = [out.index(s) for s in ("Scheduled", "Pending", "Running", final.value.title())]
    assert order == sorted(order), out
    assert "runner-x" in out
    assert "a line of the flow" in out
    assert "ended" in out
    quiet = sluice(stack, "flow-run", "watch", run.id, "--no-logs")
    assert "a line of the flow" not in quiet.stdout
    as_json = sluice(stack, "flow-run", "watch", run.id, "--json")
    assert json.loads(as_json.stdout)["state"]["type"] == final.value


def test_watch_of_an_unknown_run(stack: Stack) -> None:
    missing = "00000000-0000-4000-8000-00000000abcd"
    assert_fails(sluice(stack, "flow-run", "watch", missing), 1, "error:", missing)


def test_watch_follows_a_retried_run_past_its_earlier_end(
    stack: Stack, client: SyncClient, flow: str
) -> None:
    """History holds the first attempt's Failed; the watch goes on to the retry's end."""
    run = client.create_flow_run(flow)
    anyio.run(move, stack.settings, run.id, [StateType.RUNNING, StateType.FAILED])
    retried = sluice(stack, "flow-run", "retry", run.id)
    assert retried.exit_code == 0, retried.output
    anyio.run(move, stack.settings, run.id, [StateType.RUNNING, StateType.COMPLETED])
    result = sluice(stack, "flow-run", "watch", run.id)
    assert result.exit_code == 0, result.output
    assert result.stdout.index("Failed") < result.stdout.index("AwaitingRetry")
    assert "ended Completed" in result.stdout
