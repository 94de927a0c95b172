"""Retrying a finished flow run: completed tasks are resumed, ``--from-task`` re-runs."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner, Result

from engine.cli import app
from engine.sync import SyncClient
from shared.states import AWAITING_RETRY, StateType

from .conftest import Stack


def sluice(stack: Stack, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=stack.env)


def executions(workdir: Path) -> list[str]:
    return (workdir / "executions").read_text().split()


def test_retry_resumes_completed_tasks_and_from_task_reruns_the_rest(
    stack: Stack, client: SyncClient, deploy, tmp_path: Path
) -> None:
    deployment = deploy("five-steps", "pipeline.py:five_steps")
    run = client.create_flow_run(deployment_id=deployment.id, parameters={"workdir": str(tmp_path)})
    (tmp_path / "fail").touch()

    first = stack.run_engine(run.id)

    assert first.returncode == 0, first.stderr
    assert client.read_flow_run(run.id).state.type is StateType.FAILED
    assert executions(tmp_path) == ["extract", "clean", "transform"]

    # Fix the cause, retry: only transform, enrich and load run again.
    (tmp_path / "fail").unlink()
    retried = sluice(stack, "flow-run", "retry", run.id)
    assert retried.exit_code == 0, retried.output
    waiting = client.read_flow_run(run.id).state
    assert waiting.type is StateType.SCHEDULED and waiting.name == AWAITING_RETRY

    second = stack.run_engine(run.id)

    assert second.returncode == 0, second.stderr
    final = client.read_flow_run(run.id)
    assert final.state.type is StateType.COMPLETED and final.state.data == 63
    assert executions(tmp_path)[3:] == ["transform", "enrich", "load"]
    records = stack.final_records(run.id)
    assert [records[k].state.name for k in ("extract:0", "clean:0")] == ["Resumed", "Resumed"]
    assert records["transform:0"].state.name == "Completed"
    assert records["transform:0"].flow_run_attempt == final.attempt == 2

    # --from-task clean: clean and everything after it run again; extract does not.
    again = sluice(stack, "flow-run", "retry", run.id, "--from-task", "clean", "--execute")

    assert again.exit_code == 0, again.output
    assert executions(tmp_path)[6:] == ["clean", "transform", "enrich", "load"]
    final = client.read_flow_run(run.id)
    assert final.state.type is StateType.COMPLETED and final.state.data == 63
    records = stack.final_records(run.id)
    assert records["extract:0"].state.name == "Resumed"
    assert records["clean:0"].state.name == "Completed"


def test_the_retry_request_records_the_keys_to_rerun(
    stack: Stack, client: SyncClient, deploy, tmp_path: Path
) -> None:
    deployment = deploy("five-steps", "pipeline.py:five_steps")
    run = client.create_flow_run(deployment_id=deployment.id, parameters={"workdir": str(tmp_path)})
    assert stack.run_engine(run.id).returncode == 0

    retried = sluice(stack, "flow-run", "retry", run.id, "--from-task", "transform", "--json")

    assert retried.exit_code == 0, retried.output
    state = client.read_flow_run(run.id).state
    assert state.data == {
        "from_task": "transform",
        "rerun_task_keys": ["transform:0", "enrich:0", "load:0"],
    }
    assert "from task 'transform'" in (state.message or "")


def test_retry_refuses_unknown_tasks_and_unfinished_runs(
    stack: Stack, client: SyncClient, deploy, tmp_path: Path
) -> None:
    deployment = deploy("five-steps", "pipeline.py:five_steps")
    run = client.create_flow_run(deployment_id=deployment.id, parameters={"workdir": str(tmp_path)})

    unfinished = sluice(stack, "flow-run", "retry", run.id)
    assert unfinished.exit_code == 1 and "only a finished run" in unfinished.stderr

    assert stack.run_engine(run.id).returncode == 0
    unknown = sluice(stack, "flow-run", "retry", run.id, "--from-task", "nope")
    assert unknown.exit_code == 1
    assert "no task 'nope'" in unknown.stderr and "transform" in unknown.stderr
    assert client.read_flow_run(run.id).state.type is StateType.COMPLETED  # left as it was
