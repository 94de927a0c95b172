"""Seeds 000, 002 and 004 as their users write them: spec files, schedules as dicts,
agentless runs (--execute) and their environment, start tasks, the SynchronousExecutor."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner, Result

from engine import flow
from engine.cli import app
from engine.deployments import RunnerDeployment, build_schedules, load_specs
from engine.sync import SyncClient
from shared import names
from shared.models import CronSchedule, Infrastructure, IntervalSchedule, RRuleSchedule
from shared.states import StateType

from .conftest import FLOWS, REPO, Stack
from .flows import pipeline, seeds


def sluice(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def executions(workdir: Path) -> list[str]:
    return (workdir / "executions").read_text().split()


# --- seed 000: DeploymentSpec files ------------------------------------------------------
SEED_000 = """
from engine import flow
from engine.deployments import DeploymentSpec
from engine.flow_runners import SubprocessFlowRunner

@flow(name="{flow}")
def my_flow():
    pass

DeploymentSpec(
    name="test",
    flow=my_flow,
    flow_runner=SubprocessFlowRunner(),
)
"""


def test_a_bare_deployment_spec_is_created(
    stack: Stack, client: SyncClient, unique: str, tmp_path: Path
) -> None:
    spec = tmp_path / "deployment.py"
    spec.write_text(textwrap.dedent(SEED_000.format(flow=f"my-flow-{unique}")))
    created = sluice(stack.env, "deployment", "create", str(spec))
    assert created.exit_code == 0, created.output
    stored = client.read_deployment(f"my-flow-{unique}/test")
    assert stored.infrastructure.type == "process"
    assert stored.queue == "default"


def test_every_spec_a_file_creates_counts_once(tmp_path: Path) -> None:
    spec = tmp_path / "specs.py"
    spec.write_text(
        textwrap.dedent(
            """
            from engine import flow
            from engine.deployments import DeploymentSpec
            from engine.flow_runners import SubprocessFlowRunner, UniversalFlowRunner

            @flow
            def my_flow():
                pass

            DeploymentSpec(
                name="bare",
                flow=my_flow,
                flow_runner=SubprocessFlowRunner(env={"MY_VARIABLE": "FOO"}, condaenv="test"),
            )
            kept = DeploymentSpec(
                name="kept", flow=my_flow, flow_runner=UniversalFlowRunner(env={"A": "1"})
            )
            again = kept
            listed = [DeploymentSpec(name="listed", flow=my_flow)]
            served = my_flow.to_deployment("served")
            """
        )
    )
    found = load_specs(spec)
    assert [d.name for d in found] == ["bare", "kept", "listed", "served"]
    bare = found[0].flow_runner.to_infrastructure()
    assert bare.type == "process" and bare.env == {"MY_VARIABLE": "FOO"}
    assert bare.options["condaenv"] == "test"
    assert found[1].flow_runner.to_infrastructure() == Infrastructure(env={"A": "1"})
    assert {d.queue for d in found} == {"default"}  # a spec file's deployments are shared


# --- schedules as dicts (seed 003's add_flow(..., schedule={"cron": ...})) -----------------
def test_schedule_dicts_become_schedules() -> None:
    [cron, every, rule] = build_schedules(
        schedule=[
            {"cron": "0 * * * *"},
            {"interval": timedelta(minutes=5), "timezone": "Europe/Paris"},
            {"rrule": "FREQ=DAILY;BYHOUR=4", "timezone": "America/New_York"},
        ]
    )
    assert cron.schedule == CronSchedule(cron="0 * * * *")
    assert every.schedule == IntervalSchedule(interval=300.0, timezone="Europe/Paris")
    assert rule.schedule == RRuleSchedule(rrule="FREQ=DAILY;BYHOUR=4", timezone="America/New_York")
    [one] = pipeline.hello.to_deployment("x", schedule={"interval": 60}).schedules
    assert one.schedule == IntervalSchedule(interval=60.0)


@pytest.mark.parametrize(
    ("schedule", "error"),
    [
        ({"cron": "every hour"}, "schedule.cron: invalid cron expression 'every hour'"),
        ({"cron": "0 * * * *", "timezone": "Mars/Base"}, "schedule.timezone: unknown time zone"),
        ({"interval": -5}, "schedule.interval"),
        ({"rrule": "FREQ=SOMETIMES"}, "schedule.rrule: invalid rrule"),
        ({"cron": "0 * * * *", "interval": 60}, "schedule: a schedule needs exactly one of"),
        ({"crn": "0 * * * *"}, "schedule: a schedule needs exactly one of"),
        ({"cron": "0 * * * *", "tz": "UTC"}, "schedule.tz: not a field of a cron schedule"),
        ({"interval": "soon"}, "schedule.interval"),
    ],
)
def test_a_bad_schedule_dict_names_its_field(schedule: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match="^" + error.replace("(", r"\(").replace("*", r"\*")):
        pipeline.hello.to_deployment("x", schedule=schedule)


def test_the_orchestrator_accepts_the_dict_form_from_any_client(
    stack: Stack, client: SyncClient, unique: str
) -> None:
    async def register(body: dict[str, object]) -> dict[str, object]:
        from engine.client import Client

        async with Client(stack.settings) as c:
            reply = await c.nc.request(names.DEPLOYMENT_REGISTER, json.dumps(body).encode(), 10)
        return msgspec.json.decode(reply.data)  # type: ignore[no-any-return]

    import anyio

    body = {
        "name": "raw",
        "flow_name": f"raw-{unique}",
        "schedules": [{"schedule": {"cron": "0 * * * *", "timezone": "Europe/Paris"}}],
    }
    stored = anyio.run(register, body)
    assert stored["schedules"][0]["schedule"]["type"] == "cron"  # type: ignore[index]
    bad = anyio.run(register, {**body, "schedules": [{"schedule": {"cron": "nope"}}]})
    assert bad["error"]["code"] and "schedules[0].schedule.cron" in bad["error"]["message"]  # type: ignore[index]


# --- seed 002: agentless runs ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["process", "universal"])
def test_execute_gives_the_run_its_flow_runners_environment(
    stack: Stack, client: SyncClient, deploy, kind: str
) -> None:
    deployment = deploy(
        "my-variable",
        "seeds.py:my_variable",
        infrastructure=Infrastructure(type=kind, env={"MY_VARIABLE": "FOO"}),
    )
    done = sluice(stack.env, "run", "--id", deployment.id, "--execute", "--json")
    assert done.exit_code == 0, done.output
    run = json.loads(done.stdout)
    assert run["state"]["type"] == "COMPLETED" and run["state"]["data"] == "FOO"


def test_retry_execute_is_not_taken_by_a_runner(
    stack: Stack, client: SyncClient, deploy, unique: str, tmp_path: Path
) -> None:
    queue = f"q{unique}"
    deployment = deploy("five-steps", "pipeline.py:five_steps", queue=queue)
    run = client.create_flow_run(deployment_id=deployment.id, parameters={"workdir": str(tmp_path)})
    (tmp_path / "fail").touch()
    assert stack.run_engine(run.id).returncode == 0
    assert client.read_flow_run(run.id).state.type is StateType.FAILED
    runner_name = f"eager-{unique}"
    args = ["--name", runner_name, "--queue", queue, "--drain-seconds", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.runner", *args],
        env=stack.process_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The runner serves the queue: a run of it is taken (waited for generously).
        probe_dir = tmp_path / "probe"
        probe_dir.mkdir()
        probe = client.create_flow_run(
            deployment_id=deployment.id, parameters={"workdir": str(probe_dir)}
        )
        assert client.wait_for_flow_run(probe.id).runner == runner_name

        (tmp_path / "fail").unlink()
        retried = sluice(stack.env, "flow-run", "retry", run.id, "--execute")
        assert retried.exit_code == 0, retried.output
    finally:
        proc.terminate()
        proc.wait(60)
    final = client.read_flow_run(run.id)
    assert final.state.type is StateType.COMPLETED
    assert final.agentless and final.runner != runner_name


# --- seed 004: start tasks --------------------------------------------------------------
def test_start_tasks_reuse_an_earlier_runs_results(
    stack: Stack, client: SyncClient, tmp_path: Path
) -> None:
    target = f"{FLOWS}/pipeline.py:five_steps"
    first = sluice(stack.env, "run", "--path", target, "-p", f"workdir={tmp_path}", "--json")
    assert first.exit_code == 0, first.output
    earlier = json.loads(first.stdout)["id"]
    assert executions(tmp_path) == ["extract", "clean", "transform", "enrich", "load"]

    again = sluice(
        stack.env,
        "run",
        *("--path", target, "-p", f"workdir={tmp_path}", "--json"),
        *("--start-task", "transform", "--from-run", earlier),
    )
    assert again.exit_code == 0, again.output
    assert executions(tmp_path)[5:] == ["transform", "enrich", "load"]
    later = json.loads(again.stdout)["id"]
    assert client.read_flow_run(later).state.data == 63
    records = stack.final_records(later)
    assert [records[k].state.name for k in ("extract:0", "clean:0")] == ["Resumed", "Resumed"]
    assert records["transform:0"].state.name == "Completed"


def test_start_tasks_on_an_executed_deployment_run(
    stack: Stack, client: SyncClient, deploy, tmp_path: Path
) -> None:
    deployment = deploy("five-steps", "pipeline.py:five_steps")
    args = ["run", "--id", deployment.id, "-p", f"workdir={tmp_path}", "--execute", "--json"]
    first = sluice(stack.env, *args)
    assert first.exit_code == 0, first.output
    again = sluice(
        stack.env, *args, "--start-task", "enrich", "--from-run", json.loads(first.stdout)["id"]
    )
    assert again.exit_code == 0, again.output
    assert executions(tmp_path)[5:] == ["enrich", "load"]
    assert json.loads(again.stdout)["state"]["data"] == 63


def test_a_start_tasks_missing_input_fails_it_with_a_clear_message(
    stack: Stack, client: SyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "fail").touch()  # transform fails: enrich's input is never made
    earlier = seeds.submitted.run({"workdir": str(tmp_path)})
    assert earlier.state.type is StateType.FAILED

    again = seeds.submitted.run(
        {"workdir": str(tmp_path)}, start_tasks=["enrich"], from_run=earlier.id
    )
    # extract is resumed; transform has no kept result, so it runs (and fails again);
    # enrich, a start task, does not wait on a trigger but has no input: it fails, saying so.
    assert executions(tmp_path) == ["extract", "transform", "transform"]
    records = stack.final_records(again.id)
    assert records["extract:0"].state.name == "Resumed"
    enrich = records["enrich:0"].state
    assert enrich.type is StateType.FAILED
    assert "input(s) rows missing" in (enrich.message or "")
    assert f"run {earlier.id} kept no result" in (enrich.message or "")
    assert "start_inputs={'enrich': {'rows': ...}}" in (enrich.message or "")
    assert again.state.type is StateType.FAILED


def test_start_tasks_skip_triggers_and_take_given_inputs(tmp_path: Path) -> None:
    (tmp_path / "fail").touch()
    result = seeds.submitted.run(
        {"workdir": str(tmp_path)},
        start_tasks=[pipeline.enrich],
        start_inputs={"enrich": {"rows": [1, 2]}},
        return_tasks=["enrich", "load"],
    )
    # transform failed, so enrich's trigger (all_successful) would have held it; as a
    # start task it ran on the rows given, and load after it.
    assert executions(tmp_path) == ["extract", "transform", "enrich", "load"]
    [enrich], [load] = result.task_runs["enrich"], result.task_runs["load"]
    assert enrich.state.type is StateType.COMPLETED and load.state.data == 3


def test_bad_start_options_are_refused_before_anything_runs(tmp_path: Path) -> None:
    params = {"workdir": str(tmp_path)}
    with pytest.raises(ValueError, match="from_run and start_inputs go with start_tasks"):
        pipeline.five_steps.run(params, from_run="x")
    with pytest.raises(ValueError, match="start_tasks takes tasks or task names"):
        pipeline.five_steps.run(params, start_tasks=[""])
    with pytest.raises(ValueError, match="start_inputs names load, which are not start tasks"):
        pipeline.five_steps.run(params, start_tasks=["enrich"], start_inputs={"load": {}})
    with pytest.raises(ValueError, match="from_run= reads an earlier run's results from a stack"):
        pipeline.five_steps.run(params, start_tasks=["enrich"], from_run="x")
    assert not (tmp_path / "executions").exists()
    refused = sluice({"SLUICE_NATS_URL": None}, "run", "--name", "a/b", "--start-task", "x")
    assert refused.exit_code == 2 and "--execute" in refused.output


# --- seed 004: the SynchronousExecutor ------------------------------------------------------
def test_the_synchronous_executor_runs_everything_on_one_thread() -> None:
    result = seeds.on_one_thread.run({"n": 3})
    assert result.state.type is StateType.COMPLETED
    threads = {ident for _, ident in result.result()}
    assert threads == {threading.get_ident()}
    assert [x for x, _ in result.result()] == [0, 1, 2, -1]


def test_breakpoint_in_a_task_works_under_the_synchronous_executor(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(FLOWS / "seeds.py")],
        input="p x\nc\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SLUICE_HOME": str(tmp_path)},
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "(Pdb) 41" in done.stdout  # the debugger stopped in the task, on its argument
    assert "result: 42" in done.stdout


def test_a_flow_can_name_the_synchronous_executor() -> None:
    @flow(executor=seeds.SynchronousExecutor())
    def doubled(x: int) -> int:
        return seeds.thread_of.submit(x).result()[0] * 2

    assert doubled(21) == 42
    assert isinstance(RunnerDeployment, type)
