"""``sluice run --watch``: the CLI as its own process follows a run to its end.

The run is moved on by this test, as an engine would (``test_cli.move``),
against the module-scoped stack that ``test_cli`` builds.
"""

from __future__ import annotations

import json
import subprocess
import sys

import anyio
import pytest

from engine.sync import SyncClient
from shared.states import StateType

from . import _cli
from ._cli import INSPECT_HINT, WATCHED_STATE, Stack, move, sluice

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
