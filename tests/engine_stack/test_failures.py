"""A failed run's traceback, kept in its state and shown in its log and by the CLI.

The run is executed by ``python -m engine`` (a real process) against the
package's orchestrator process; the CLI reads it back as a user would.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from engine.cli import _render, app
from engine.sync import SyncClient
from shared.states import StateType

from .conftest import FLOWS, Stack

FILE = FLOWS / "failing.py"
LINE = next(i for i, t in enumerate(FILE.read_text().splitlines(), 1) if "FAILING LINE" in t)
WHERE = f'File "{FILE}", line {LINE}, in open_table'


def test_a_failing_task_leaves_its_traceback_in_the_state_the_log_and_inspect(
    stack: Stack, client: SyncClient, deploy
) -> None:
    deployment = deploy("failing", "failing.py:failing")
    run = client.create_flow_run(deployment.full_name)

    done = stack.run_engine(run.id)

    assert done.returncode == 0, done.stderr  # a failure the engine reported
    final = client.read_flow_run(run.id)
    assert final.state.type is StateType.FAILED
    assert final.state.details.error_type == "ValueError"
    assert WHERE in (final.state.details.traceback or ""), final.state.details.traceback
    task_final = stack.final_records(run.id)["extract:0"].state
    assert task_final.type is StateType.FAILED and WHERE in (task_final.details.traceback or "")

    # What --watch prints for the final state: the state line, then the traceback.
    watched = _render.state_line(final).plain
    assert watched.splitlines()[0].endswith(final.state.message or "")
    assert f"line {LINE}, in open_table" in watched

    cli = CliRunner()
    inspected = cli.invoke(app, ["flow-run", "inspect", run.id, "--json"], env=stack.env)
    assert inspected.exit_code == 0, inspected.output
    state = json.loads(inspected.stdout)["state"]
    assert WHERE in state["details"]["traceback"]
    assert state["details"]["error_type"] == "ValueError"
    shown = cli.invoke(app, ["flow-run", "inspect", run.id], env={**stack.env, "COLUMNS": "200"})
    assert "traceback" in shown.stdout and f"line {LINE}, in open_table" in shown.stdout

    records = stack.logs(run.id)
    retries = [r.message for r in records if r.level == 30]
    assert [m.split("\n")[0] for m in retries] == [
        "task extract-0 failed (ValueError: table 'orders' does not exist); retry 1 of 2 in 0.0 s",
        "task extract-0 failed (ValueError: table 'orders' does not exist); retry 2 of 2 in 0.0 s",
    ]
    errors = [r for r in records if r.level == 40]
    task_error = next(r for r in errors if r.task_run_name == "extract-0")
    assert task_error.message.startswith("task extract-0 failed: ValueError")
    assert WHERE in task_error.message and "Traceback (most recent call last)" in task_error.message
    assert task_error.task_run_id == stack.final_records(run.id)["extract:0"].task_run_id

    logs = cli.invoke(app, ["flow-run", "logs", run.id], env={**stack.env, "COLUMNS": "200"})
    assert logs.exit_code == 0, logs.output
    assert "extract-0 | task extract-0 failed: ValueError" in logs.stdout
    assert f"line {LINE}, in open_table" in logs.stdout
    # The logged traceback is the state's, without the engine's frames.
    assert "engine/_core/drive.py" not in logs.stdout
    # --watch shows the traceback once: in the task's log line, not again under
    # the flow's final state, which keeps that same traceback.
    watch = cli.invoke(app, ["flow-run", "watch", run.id], env={**stack.env, "COLUMNS": "200"})
    assert watch.exit_code == 1, watch.output
    assert watch.stdout.count(f"line {LINE}, in open_table") == 3, watch.stdout  # 2 retries, 1 end
    assert watch.stdout.rstrip().splitlines()[-2].endswith(final.state.message or "")
    states_only = cli.invoke(
        app, ["flow-run", "watch", run.id, "--no-logs"], env={**stack.env, "COLUMNS": "200"}
    )
    assert states_only.stdout.count(f"line {LINE}, in open_table") == 1, states_only.stdout
    as_json = cli.invoke(app, ["flow-run", "logs", run.id, "--json"], env=stack.env)
    assert any(
        r["task_run_name"] == "extract-0" and WHERE in r["message"]
        for r in json.loads(as_json.stdout)
    )


def test_a_flow_file_that_fails_to_import_keeps_where_it_failed(
    stack: Stack, client: SyncClient, deploy
) -> None:
    deployment = deploy("broken", "broken.py:anything")
    run = client.create_flow_run(deployment.full_name)

    done = stack.run_engine(run.id)

    assert done.returncode == 0, done.stderr
    final = client.read_flow_run(run.id)
    assert final.state.type is StateType.FAILED
    assert "importing" in (final.state.message or "")
    assert f'File "{FLOWS / "broken.py"}"' in (final.state.details.traceback or "")
    errors = [r for r in stack.logs(run.id) if r.level == 40]
    assert any(str(FLOWS / "broken.py") in r.message for r in errors)
