"""``python -m engine`` executing stored runs, as real processes against a real stack."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from engine.client import Client
from engine.sync import SyncClient
from shared import names
from shared.codec import decode
from shared.messages import Decision, Dispatch, ProposedState
from shared.states import StateType

from .conftest import Stack


def test_a_deployment_run_completes_with_its_result_task_records_and_logs(
    stack: Stack, client: SyncClient, deploy
) -> None:
    deployment = deploy("hello", "pipeline.py:hello")
    run = client.create_flow_run(deployment.full_name, parameters={"name": "bob", "times": "3"})

    done = stack.run_engine(run.id)

    assert done.returncode == 0, done.stderr
    final = client.read_flow_run(run.id)
    assert final.state.type is StateType.COMPLETED, final.state
    assert final.state.data == {"greetings": ["hello bob"] * 3, "times": 3}  # "3" was coerced
    assert final.attempt == 1 and (final.runner or "").startswith("engine@")
    records = stack.final_records(run.id)
    assert sorted(records) == ["greet:0[0]", "greet:0[1]", "greet:0[2]"]
    for record in records.values():
        assert record.state.type is StateType.COMPLETED
        assert record.state.data == "hello bob"
        assert record.flow_run_attempt == 1 and record.map_index is not None
    logs = stack.logs(run.id)
    messages = [r.message for r in logs]
    assert "starting for bob" in messages  # print() with log_prints
    greetings = [r for r in logs if r.message == "greeting bob"]
    assert len(greetings) == 3
    assert {r.task_run_id for r in greetings} == {r.task_run_id for r in records.values()}


@pytest.mark.parametrize(
    ("entrypoint", "parameters", "fragment"),
    [
        ("broken.py:anything", {}, "importing"),
        ("pipeline.py:not_a_flow", {}, "is a function, not a flow"),
        ("pipeline.py:no_such_name", {}, "has no attribute 'no_such_name'"),
        ("pipeline.py:hello", {}, "missing required parameter 'name'"),
        ("pipeline.py:hello", {"name": "x", "times": "many"}, "parameter 'times'"),
    ],
)
def test_user_errors_end_the_run_failed_with_a_message(
    stack: Stack, client: SyncClient, deploy, entrypoint: str, parameters: dict, fragment: str
) -> None:
    deployment = deploy("user-errors", entrypoint)
    run = client.create_flow_run(deployment_id=deployment.id, parameters=parameters)

    done = stack.run_engine(run.id)

    assert done.returncode == 0, done.stderr  # reported: the engine did its job
    final = client.read_flow_run(run.id)
    assert final.state.type is StateType.FAILED
    assert fragment in (final.state.message or ""), final.state.message
    assert "Traceback" not in done.stderr


def test_a_stale_attempt_is_refused_and_the_current_one_runs(
    stack: Stack, client: SyncClient, deploy, tmp_path: Path
) -> None:
    deployment = deploy("five-steps", "pipeline.py:five_steps")
    run = client.create_flow_run(deployment_id=deployment.id, parameters={"workdir": str(tmp_path)})
    claim = client.propose_state(
        run.id, ProposedState(type=StateType.PENDING), attempt=run.attempt, runner="test-runner"
    )
    assert claim.status is Decision.ACCEPT and claim.attempt == 1

    stale = stack.run_engine(run.id, attempt=0)

    assert stale.returncode == 1
    assert "stale" in stale.stderr
    assert client.read_flow_run(run.id).state.type is StateType.PENDING
    assert not (tmp_path / "executions").exists()  # the body never ran

    current = stack.run_engine(run.id, attempt=claim.attempt)

    assert current.returncode == 0, current.stderr
    final = client.read_flow_run(run.id)
    assert final.state.type is StateType.COMPLETED and final.state.data == 63
    assert final.runner == "test-runner"  # the runner's claim, not a new one


def test_a_run_scheduled_later_is_made_to_wait(stack: Stack, client: SyncClient, deploy) -> None:
    deployment = deploy("hello", "pipeline.py:hello")
    # Far enough ahead that the engine's process is up before it, even on a busy machine.
    start = datetime.now(UTC) + timedelta(seconds=3)
    run = client.create_flow_run(
        deployment_id=deployment.id, parameters={"name": "later"}, scheduled_start_time=start
    )

    done = stack.run_engine(run.id)

    assert done.returncode == 0, done.stderr
    final = client.read_flow_run(run.id)
    assert final.state.type is StateType.COMPLETED
    assert final.start_time is not None and final.start_time >= start
    assert any(r.message.startswith("waiting") for r in stack.logs(run.id))


def test_subflows_are_child_runs_of_their_parent(stack: Stack, client: SyncClient, deploy) -> None:
    deployment = deploy("parent", "pipeline.py:parent")
    run = client.create_flow_run(deployment_id=deployment.id, parameters={"x": 4})

    done = stack.run_engine(run.id)

    assert done.returncode == 0, done.stderr
    assert client.read_flow_run(run.id).state.data == 4 * 2 + 5 * 2
    children = client.list_flow_runs(parent_flow_run_id=run.id).flow_runs
    assert len(children) == 2
    for child in children:
        assert child.flow_name == "child" and child.agentless
        assert child.state.type is StateType.COMPLETED
        assert child.parent_flow_run_id == run.id
        assert any(r.message.startswith("child got") for r in stack.logs(child.id))
    assert sorted(c.state.data for c in children) == [8, 10]


def _next_dispatched(stack: Stack, deployment_id: str) -> str:
    """Block until a run of the deployment is offered to runners; its id."""

    async def first(client: Client) -> str:
        js = client.nc.jetstream()
        sub = await js.subscribe(
            names.dispatch_subject("*", deployment_id),
            stream=names.DISPATCH_STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        try:
            msg = await sub.next_msg(timeout=60)
            return decode(msg.data, Dispatch).flow_run_id
        finally:
            await sub.unsubscribe()

    return stack.call(first)  # type: ignore[no-any-return]


def test_a_flow_creates_a_deployment_run_and_waits_for_it(
    stack: Stack, client: SyncClient, deploy
) -> None:
    hello = deploy("hello", "pipeline.py:hello")
    parent_dep = deploy("orchestrating", "pipeline.py:orchestrating")
    parent = client.create_flow_run(
        deployment_id=parent_dep.id, parameters={"deployment": hello.full_name}
    )
    proc = stack.start_engine(parent.id)
    try:
        # This test plays the runner: the child is offered on the dispatch stream.
        child_id = _next_dispatched(stack, hello.id)
        child = stack.run_engine(child_id)
        assert child.returncode == 0, child.stderr
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    final = client.read_flow_run(parent.id)
    assert final.state.data == f"{child_id} COMPLETED {parent.id}"
    assert client.read_flow_run(child_id).parent_flow_run_id == parent.id


def test_an_unknown_run_exits_1_without_reporting(stack: Stack) -> None:
    missing = stack.run_engine("00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 1
    assert "no flow run" in missing.stderr and "Traceback" not in missing.stderr


def test_usage() -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "engine", "--help"], capture_output=True, text=True, check=False
    )
    assert helped.returncode == 0 and "--flow-run-id" in helped.stdout
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_FLOW_RUN_ID"}
    bare = subprocess.run(
        [sys.executable, "-m", "engine"], capture_output=True, text=True, env=env, check=False
    )
    assert bare.returncode == 2 and "SLUICE_FLOW_RUN_ID" in bare.stderr


def test_the_process_ends_like_python_would_for_the_flow(
    stack: Stack, client: SyncClient, deploy, tmp_path: Path
) -> None:
    # The process skips tearing the interpreter down, but not what a flow may
    # rely on: its non-daemon threads finish and its exit callbacks run.
    deployment = deploy("leaves-work-behind", "pipeline.py:leaves_work_behind")
    run = client.create_flow_run(deployment.full_name, parameters={"workdir": str(tmp_path)})

    done = stack.run_engine(run.id)

    assert done.returncode == 0, done.stderr
    assert client.read_flow_run(run.id).state.data == "returned"
    # As in a normal exit: threads are waited for first, then the exit callbacks run.
    assert (tmp_path / "executions").read_text().split() == ["thread", "atexit"]
