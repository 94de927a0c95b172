"""The ``sluice`` CLI end to end, against a real stack.

The session's nats-server plus an orchestrator started as a process for this
module (the in-process ``orchestrator`` fixture lives in an event loop, and
each CLI command runs its own with ``anyio.run``). Commands run in-process
through Typer's ``CliRunner``, or as ``python -m engine.cli`` where the test
needs what a user sees from a real process: the stack being down,
``sluice dev``, and live ``--watch`` output (``test_cli_watch``, whose stack
comes from the fixtures in ``tests/_cli.py``).

The server is shared by the whole session, so every flow, deployment and tag
carries a unique suffix. ``flow-run ls`` reads the orchestrator's query index,
which follows the event stream, so those tests wait (by asking again, never
by sleeping) until the index has caught up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.sync import SyncClient
from services.dev import free_port
from shared.codec import encode
from shared.messages import RegisterDeployment
from shared.states import StateType

from . import _cli
from ._cli import (
    INSPECT_HINT,
    ServiceProcess,
    Stack,
    assert_fails,
    eventually,
    listed_ids,
    move,
    sluice,
    sluice_json,
)

# The module-scoped stack and the fixtures built on it (tests/_cli.py).
stack = _cli.stack
client = _cli.client
flow = _cli.flow


# --- sluice run ---------------------------------------------------------------------------
def test_run_by_full_name(stack: Stack, client: SyncClient, flow: str) -> None:
    result = sluice(stack, "run", "--name", f"{flow}/main")
    assert result.exit_code == 0, result.output
    match = INSPECT_HINT.search(result.stdout)
    assert match, result.stdout
    run = client.read_flow_run(match[1])
    assert run.name in result.stdout
    assert "Scheduled" in result.stdout
    assert run.deployment_name == f"{flow}/main"
    assert run.state.type is StateType.SCHEDULED
    assert run.parameters == {"a": 1, "b": "x"}


def test_run_by_bare_flow_name(stack: Stack, flow: str) -> None:
    run = sluice_json(stack, "run", "--name", flow)
    assert run["deployment_name"] == f"{flow}/main"
    assert run["state"]["type"] == "SCHEDULED"


def test_run_by_deployment_id(stack: Stack, client: SyncClient, flow: str) -> None:
    deployment = client.read_deployment(f"{flow}/main")
    run = sluice_json(stack, "run", "--id", deployment.id)
    assert run["deployment_id"] == deployment.id


def test_run_with_an_ambiguous_flow_name_lists_the_choices(
    stack: Stack, client: SyncClient, flow: str
) -> None:
    client.register_deployment(RegisterDeployment(name="other", flow_name=flow))
    result = sluice(stack, "run", "--name", flow)
    assert_fails(result, 1, "error:", f"{flow}/main", f"{flow}/other")


def test_run_of_an_unknown_deployment(stack: Stack, unique: str) -> None:
    result = sluice(stack, "run", "--name", f"nothing-{unique}/here")
    assert_fails(result, 1, "error:", f"nothing-{unique}/here")


def test_run_merges_params_and_param(stack: Stack, flow: str) -> None:
    run = sluice_json(
        stack,
        "run",
        "--name",
        flow,
        "--params",
        '{"b": "from params", "c": [1, 2], "d": 1}',
        "--param",
        "d=2",
        "--param",
        "e=true",
        "--param",
        "f=2026-11-20",
        "--param",
        'g={"k": null}',
    )
    assert run["parameters"] == {
        "a": 1,
        "b": "from params",
        "c": [1, 2],
        "d": 2,
        "e": True,
        "f": "2026-11-20",
        "g": {"k": None},
    }


def test_run_refuses_parameters_the_schema_refuses(stack: Stack, flow: str) -> None:
    result = sluice(stack, "run", "--name", flow, "--param", "a=not-a-number")
    assert_fails(result, 1, "error:", "a")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--param", "no-equals-sign"], "--param"),
        (["--param", "=value"], "--param"),
        (["--params", "[1, 2]"], "--params"),
        (["--params", "{not json"], "--params"),
        (["--start-in", "soon"], "--start-in"),
        (["--start-in", "-5m"], "--start-in"),
        (["--start-at", "next tuesday"], "--start-at"),
        (["--start-in", "5m", "--start-at", "2030-01-01T00:00:00"], "--start-at"),
    ],
)
def test_run_usage_errors_exit_2(stack: Stack, flow: str, args: list[str], fragment: str) -> None:
    result = sluice(stack, "run", "--name", flow, *args)
    assert_fails(result, 2, fragment)


@pytest.mark.parametrize(
    "args", [[], ["--name", "f/d", "--id", "5c7d6bf0-d50a-4439-85e4-b2609fab3ee7"]]
)
def test_run_needs_exactly_one_of_name_and_id(stack: Stack, args: list[str]) -> None:
    assert_fails(sluice(stack, "run", *args), 2, "--name")


def test_run_start_in_schedules_the_future(stack: Stack, flow: str) -> None:
    before = datetime.now(UTC)
    run = sluice_json(stack, "run", "--name", flow, "--start-in", "5m")
    after = datetime.now(UTC)
    start = datetime.fromisoformat(run["expected_start_time"])
    assert before + timedelta(minutes=5) <= start <= after + timedelta(minutes=5)
    assert run["state"]["type"] == "SCHEDULED"
    assert datetime.fromisoformat(run["state"]["details"]["scheduled_time"]) == start


def test_run_start_at_without_offset_is_utc(stack: Stack, flow: str) -> None:
    run = sluice_json(stack, "run", "--name", flow, "--start-at", "2030-01-02T03:04:05")
    assert datetime.fromisoformat(run["expected_start_time"]) == datetime(
        2030, 1, 2, 3, 4, 5, tzinfo=UTC
    )


def test_run_with_an_idempotency_key_twice_is_one_run(stack: Stack, flow: str, unique: str) -> None:
    args = ["run", "--name", flow, "--idempotency-key", f"key-{unique}", "--run-name", "once"]
    first = sluice_json(stack, *args)
    second = sluice_json(stack, *args)
    assert first["id"] == second["id"]
    assert first["name"] == "once"


# --- sluice flow-run ------------------------------------------------------------------------
def test_flow_run_ls_filters_by_state_and_tag(
    stack: Stack, client: SyncClient, flow: str, unique: str
) -> None:
    tag = f"t-{unique}"
    kept = client.create_flow_run(flow, tags=[tag])
    cancelled = client.create_flow_run(flow, tags=[tag, "extra"])
    client.create_flow_run(flow)  # untagged: never listed below
    client.cancel_flow_run(cancelled.id)

    def both_indexed() -> set[str] | None:
        ids = listed_ids(stack, "--tag", tag, "--state", "CANCELLED", "--state", "SCHEDULED")
        return ids if ids == {kept.id, cancelled.id} else None

    eventually(both_indexed, "the runs to reach the query index")
    assert listed_ids(stack, "--tag", tag, "--state", "Cancelled") == {cancelled.id}
    assert listed_ids(stack, "--tag", tag, "--state", "scheduled") == {kept.id}
    assert listed_ids(stack, "--tag", tag, "--tag", "extra") == {cancelled.id}
    assert listed_ids(stack, "--tag", tag, "--deployment", f"{flow}/main") == {
        kept.id,
        cancelled.id,
    }
    assert listed_ids(stack, "--tag", tag, "--flow", flow) == {kept.id, cancelled.id}
    assert listed_ids(stack, "--tag", tag, "--flow", f"not-{flow}") == set()
    bare = sluice(stack, "flow-run", "ls", "--deployment", flow)
    assert_fails(bare, 2, "--flow")

    page = sluice_json(stack, "flow-run", "ls", "--tag", tag, "--limit", "1")
    assert len(page["flow_runs"]) == 1
    assert page["next_offset"] == 1

    table = sluice(stack, "flow-run", "ls", "--tag", tag)
    assert table.exit_code == 0, table.output
    for run in (kept, cancelled):
        assert run.id in table.stdout
        assert run.name in table.stdout
    assert "Cancelled" in table.stdout


def test_flow_run_inspect(stack: Stack, client: SyncClient, flow: str) -> None:
    run = client.create_flow_run(flow, parameters={"b": "shown"}, tags=["inspected"])
    result = sluice(stack, "flow-run", "inspect", run.id)
    assert result.exit_code == 0, result.output
    for fragment in (run.id, run.name, f"{flow}/main", "Scheduled", '"shown"', "inspected"):
        assert fragment in result.stdout
    assert sluice_json(stack, "flow-run", "inspect", run.id) == json.loads(encode(run))


def test_flow_run_inspect_unknown_or_malformed_id(stack: Stack) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    assert_fails(sluice(stack, "flow-run", "inspect", missing), 1, "error:", missing)
    assert_fails(
        sluice(stack, "flow-run", "inspect", "not-an-id"),
        1,
        "error:",
        "no flow run has the id, id prefix or name 'not-an-id'",
    )


def test_flow_run_cancel_is_harmless_twice(stack: Stack, client: SyncClient, flow: str) -> None:
    run = client.create_flow_run(flow)
    result = sluice(stack, "flow-run", "cancel", run.id, "--reason", "not today")
    assert result.exit_code == 0, result.output
    assert "Cancelled" in result.stdout
    cancelled = client.read_flow_run(run.id)
    assert cancelled.state.type is StateType.CANCELLED
    assert cancelled.state.message == "not today"

    again = sluice_json(stack, "flow-run", "cancel", run.id)
    assert again["state"]["type"] == "CANCELLED"
    assert client.read_flow_run(run.id).state == cancelled.state


def test_flow_run_cancel_of_a_finished_run_is_an_error(
    stack: Stack, client: SyncClient, flow: str
) -> None:
    run = client.create_flow_run(flow)
    anyio.run(move, stack.settings, run.id, [StateType.RUNNING, StateType.COMPLETED])
    assert_fails(sluice(stack, "flow-run", "cancel", run.id), 1, "error:", "Completed")


def test_flow_run_logs(stack: Stack, client: SyncClient, flow: str) -> None:
    run = client.create_flow_run(flow)
    quiet = sluice(stack, "flow-run", "logs", run.id)
    assert quiet.exit_code == 0, quiet.output
    assert sluice_json(stack, "flow-run", "logs", run.id) == []

    lines = ["first line", "second line", "third line"]
    anyio.run(move, stack.settings, run.id, [StateType.RUNNING, StateType.COMPLETED], lines)
    result = sluice(stack, "flow-run", "logs", run.id)
    assert result.exit_code == 0, result.output
    positions = [result.stdout.index(line) for line in lines]
    assert positions == sorted(positions)
    records = sluice_json(stack, "flow-run", "logs", run.id)
    assert [r["message"] for r in records] == lines

    # --follow on a finished run prints what there is and ends
    followed = sluice(stack, "flow-run", "logs", run.id, "--follow", "--json")
    assert followed.exit_code == 0, followed.output
    assert [json.loads(line)["message"] for line in followed.stdout.splitlines()] == lines


# --- sluice deployment -----------------------------------------------------------------------
def test_deployment_ls_and_inspect(stack: Stack, client: SyncClient, flow: str) -> None:
    deployment = client.read_deployment(f"{flow}/main")
    page = sluice_json(stack, "deployment", "ls", "--flow", flow)
    assert [d["id"] for d in page["deployments"]] == [deployment.id]
    table = sluice(stack, "deployment", "ls", "--flow", flow)
    assert table.exit_code == 0, table.output
    assert f"{flow}/main" in table.stdout
    assert deployment.id in table.stdout

    shown = sluice(stack, "deployment", "inspect", f"{flow}/main")
    assert shown.exit_code == 0, shown.output
    for fragment in (deployment.id, f"{flow}/main", "active", '"b": "x"', "cli"):
        assert fragment in shown.stdout
    by_name = sluice_json(stack, "deployment", "inspect", flow)
    by_id = sluice_json(stack, "deployment", "inspect", "--id", deployment.id)
    assert by_name == by_id == json.loads(encode(deployment))


def test_deployment_pause_resume_delete(stack: Stack, client: SyncClient, flow: str) -> None:
    name = f"{flow}/main"
    paused = sluice(stack, "deployment", "pause", name)
    assert paused.exit_code == 0, paused.output
    assert "paused" in paused.stdout
    assert client.read_deployment(name).paused

    resumed = sluice_json(stack, "deployment", "resume", name)
    assert resumed["paused"] is False
    assert not client.read_deployment(name).paused

    deleted = sluice(stack, "deployment", "delete", name)
    assert deleted.exit_code == 0, deleted.output
    assert_fails(sluice(stack, "deployment", "inspect", name), 1, "error:", name)
    assert_fails(sluice(stack, "deployment", "pause", name), 1, "error:")


def test_deployment_commands_need_a_name_or_an_id(stack: Stack) -> None:
    assert_fails(sluice(stack, "deployment", "inspect"), 2, "FLOW/DEPLOYMENT")
    assert_fails(sluice(stack, "deployment", "inspect", "--id", "nope"), 2, "--id")


# --- when the stack is not there ----------------------------------------------------------------
def test_stack_not_running(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    env = {**os.environ, "SLUICE_NATS_URL": url, "SLUICE_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "flow-run", "ls"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: cannot reach NATS at {url}")
    assert "sluice dev" in done.stderr
    assert "Traceback" not in done.stderr


def test_dev_runs_the_embedded_stack(tmp_path: Path) -> None:
    """``sluice dev`` becomes ``python -m services.dev``: it serves, and stops on SIGTERM."""
    env = {"SLUICE_NATS_URL": f"nats://127.0.0.1:{free_port()}", "SLUICE_HOME": str(tmp_path)}
    process_env = {**os.environ, **env, "SLUICE_LOG_LEVEL": "INFO"}
    with ServiceProcess(["-m", "engine.cli", "dev"], process_env, "sluice dev ready") as dev:
        dev.wait_ready()
        listed = CliRunner().invoke(app, ["deployment", "ls", "--json"], env=env)
        assert listed.exit_code == 0, listed.output
        served = {
            d["flow_name"] + "/" + d["name"] for d in json.loads(listed.stdout)["deployments"]
        }
        assert "hello-world/default" in served  # the example flows
        assert dev.stop() == 0
    assert (tmp_path / "nats" / "jetstream").is_dir()
