"""The CLI's daily-use commands for runs, end to end against a real stack.

``--version``, ``runner start``, ``flow-run delete``, ``ls --since/--until``,
``logs --tail/--level``, runs named by id prefix or name, state names checked,
``inspect`` with task runs, history and result, shell completion, a repeated
idempotency key, and "did you mean". Same stack and helpers as ``test_cli``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from engine.client import Client
from engine.sync import SyncClient
from services.dev import free_port
from shared import names
from shared.codec import encode
from shared.errors import FlowRunNotFound
from shared.messages import Decision, ProposedState, RegisterDeployment, TaskRunRecord
from shared.models import DeploymentSchedule, IntervalSchedule
from shared.states import State, StateDetails, StateType

from . import _cli
from ._cli import ServiceProcess, Stack, assert_fails, eventually, log, move, sluice, sluice_json

# The module-scoped stack and the fixtures built on it, (tests/_cli.py).
stack = _cli.stack
client = _cli.client
flow = _cli.flow


def sluice_process(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``sluice`` as its own process (commands that replace the process must run so)."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        env={**stack.process_env(), **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- sluice --version, sluice runner start ---------------------------------------------------
def test_version(stack: Stack) -> None:
    for flag in ("--version", "-V"):
        result = sluice(stack, flag)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == "sluice 0.1.0"


def test_runner_start_takes_the_runner_services_options(stack: Stack) -> None:
    helped = sluice_process(stack, "runner", "start", "--help")
    assert helped.returncode == 0, helped.stderr
    for option in ("--name", "--limit", "--queue", "--deployment", "--fork", "--standby"):
        assert option in helped.stdout
    wrong = sluice_process(stack, "runner", "start", "--limmit", "3")
    assert wrong.returncode == 2
    assert "--limmit" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_runner_start_runs_a_runner_that_heartbeats(stack: Stack, client: SyncClient) -> None:
    name = f"cli-runner-{free_port()}"
    env = {**stack.process_env(), "SLUICE_LOG_LEVEL": "INFO", "SLUICE_RUNNER_LIMIT": "3"}
    args = ["-m", "engine.cli", "runner", "start", "--name", name, "--queue", f"q-{name}"]
    with ServiceProcess(args, env, "runner ready") as runner:
        runner.wait_ready()

        async def heartbeat() -> int | None:
            async with Client(stack.settings) as c:
                kv = await c.nc.jetstream().key_value(names.HEARTBEATS_BUCKET)
                with anyio.move_on_after(30):
                    while True:
                        try:
                            entry = await kv.get(name)
                        except Exception:
                            await anyio.sleep(0.2)
                            continue
                        return json.loads(entry.value or b"{}")["limit"]
            return None

        assert anyio.run(heartbeat) == 3  # the SLUICE_RUNNER_* variable reached it
        assert runner.stop() == 0


# --- flow-run delete -----------------------------------------------------------------------------
def test_delete_an_upcoming_and_a_finished_run(stack: Stack, client: SyncClient, flow: str) -> None:
    upcoming = client.create_flow_run(
        flow, scheduled_start_time=datetime.now(UTC) + timedelta(hours=2)
    )
    result = sluice(stack, "flow-run", "delete", upcoming.id)
    assert result.exit_code == 0, result.output
    assert f"Deleted flow run {upcoming.name}" in result.stdout
    with pytest.raises(FlowRunNotFound):
        client.read_flow_run(upcoming.id)

    finished = client.create_flow_run(flow)
    anyio.run(move, stack.settings, finished.id, [StateType.RUNNING, StateType.COMPLETED])
    assert sluice_json(stack, "flow-run", "delete", finished.id[:13]) == {
        "id": finished.id,
        "deleted": True,
    }
    assert finished.id not in {r.id for r in client.list_flow_runs(flow_name=flow).flow_runs}
    assert_fails(sluice(stack, "flow-run", "delete", finished.id), 1, "error:", finished.id)


def test_delete_refuses_a_run_under_way(stack: Stack, client: SyncClient, flow: str) -> None:
    run = client.create_flow_run(flow)
    anyio.run(move, stack.settings, run.id, [StateType.RUNNING])
    assert_fails(sluice(stack, "flow-run", "delete", run.id), 1, "error:", "cancel it first")
    assert client.read_flow_run(run.id).state.type is StateType.RUNNING


def test_pause_and_resume_help_say_what_happens_to_upcoming_runs(stack: Stack) -> None:
    paused = sluice(stack, "deployment", "pause", "--help")
    text = " ".join(paused.stdout.split())
    assert "remove the upcoming runs they created" in text
    assert "Runs created by hand (sluice run, the UI, the API) are never touched" in text
    assert "not touched" not in text.replace("never touched", "")
    resumed = " ".join(sluice(stack, "deployment", "resume", "--help").stdout.split())
    assert "their upcoming runs are created again" in resumed


# --- flow-run ls --since/--until, unknown states ---------------------------------------------
def test_ls_since_and_until(stack: Stack, client: SyncClient, flow: str, unique: str) -> None:
    tag = f"when-{unique}"
    base = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)
    early, middle, late = (
        client.create_flow_run(flow, tags=[tag], scheduled_start_time=base + timedelta(hours=h))
        for h in (0, 1, 2)
    )

    def listed(*args: str) -> set[str]:
        page = sluice_json(stack, "flow-run", "ls", "--tag", tag, *args)
        return {run["id"] for run in page["flow_runs"]}

    eventually(lambda: listed() == {early.id, middle.id, late.id} or None, "the index")
    assert listed("--since", "2031-03-01T13:00:00Z") == {middle.id, late.id}
    assert listed("--until", "2031-03-01T13:00:00Z") == {early.id}
    assert listed("--since", "2031-03-01T12:30", "--until", "2031-03-01T14:00") == {middle.id}
    assert listed("--since", "1h") == {early.id, middle.id, late.id}  # all in the future
    assert listed("--until", "1h") == set()
    assert_fails(sluice(stack, "flow-run", "ls", "--since", "last week"), 2, "--since")
    assert_fails(
        sluice(stack, "flow-run", "ls", "--since", "2031-03-02", "--until", "2031-03-01"),
        2,
        "--since must be before --until",
    )


def test_an_unknown_state_is_an_error_listing_the_valid_ones(stack: Stack) -> None:
    result = sluice(stack, "flow-run", "ls", "--state", "BOGUS")
    assert_fails(result, 1, "error:", "unknown state 'BOGUS'", "COMPLETED", "Late", "AwaitingRetry")
    assert "No flow runs match" not in result.output


# --- logs --tail/--level ---------------------------------------------------------------------
def test_logs_tail_and_level(stack: Stack, client: SyncClient, flow: str) -> None:
    run = client.create_flow_run(flow)
    lines = [(10, "debug one"), (20, "info two"), (30, "warning three"), (40, "error four")]
    log(stack.settings, run.id, lines)
    anyio.run(move, stack.settings, run.id, [StateType.RUNNING, StateType.COMPLETED])

    def messages(*args: str) -> list[str]:
        return [r["message"] for r in sluice_json(stack, "flow-run", "logs", run.id, *args)]

    assert messages("--tail", "2") == ["warning three", "error four"]
    assert messages("--level", "warning") == ["warning three", "error four"]
    assert messages("--level", "INFO", "--tail", "1") == ["error four"]
    assert messages("--level", "30") == ["warning three", "error four"]
    assert messages("--tail", "0") == []
    followed = sluice(stack, "flow-run", "logs", run.id, "-f", "-n", "2", "--level", "info")
    assert followed.exit_code == 0, followed.output
    assert "debug one" not in followed.stdout and "info two" not in followed.stdout
    assert followed.stdout.count("error four") == 1
    assert_fails(sluice(stack, "flow-run", "logs", run.id, "--level", "LOUD"), 2, "--level")
    assert_fails(sluice(stack, "flow-run", "logs", run.id, "--tail", "-1"), 2, "--tail")


# --- runs by id prefix or name ---------------------------------------------------------------
def test_a_run_by_unique_prefix_or_name_and_ambiguity(
    stack: Stack, client: SyncClient, flow: str, unique: str
) -> None:
    named = client.create_flow_run(flow, name=f"nightly-{unique}")
    assert sluice_json(stack, "flow-run", "inspect", named.id[:12])["id"] == named.id
    assert sluice_json(stack, "flow-run", "inspect", named.id.upper()[:12])["id"] == named.id
    assert sluice_json(stack, "flow-run", "inspect", f"nightly-{unique}")["id"] == named.id

    twin = client.create_flow_run(flow, name=f"nightly-{unique}")
    result = sluice(stack, "flow-run", "cancel", f"nightly-{unique}")
    assert_fails(result, 1, "error:", "matches 2 flow runs", named.id, twin.id)
    assert client.read_flow_run(named.id).state.type is StateType.SCHEDULED
    assert_fails(sluice(stack, "flow-run", "logs", "zz-no-such-run"), 1, "zz-no-such-run")


# --- inspect: task runs, history, result, --web ---------------------------------------------
def test_inspect_shows_task_runs_history_and_result(
    stack: Stack, client: SyncClient, flow: str
) -> None:
    # Inspected by its name: a generated one may repeat among the session's
    # hundreds of runs ("matches 2 flow runs"), so it gets its own.
    run = client.create_flow_run(flow, name=f"inspected-{uuid.uuid4().hex[:8]}")

    async def execute() -> None:
        async with Client(stack.settings) as c:
            await c.propose_state(run.id, ProposedState(type=StateType.RUNNING, message="go"))
            js = c.nc.jetstream()
            now = datetime.now(UTC)
            for offset, state_type in ((0, StateType.RUNNING), (2, StateType.COMPLETED)):
                state = State(
                    type=state_type,
                    name=state_type.value.title(),
                    timestamp=now + timedelta(seconds=offset),
                )
                record = TaskRunRecord(
                    flow_run_id=run.id,
                    task_run_id="t-1",
                    task_key="extract-0",
                    task_name="extract",
                    name="extract-0",
                    state=state,
                    flow_run_attempt=1,
                )
                await js.publish(names.taskruns_subject(run.id), encode(record))
            done = ProposedState(type=StateType.COMPLETED, data={"rows": 42})
            assert (await c.propose_state(run.id, done)).status is Decision.ACCEPT

    anyio.run(execute)
    result = sluice(stack, "flow-run", "inspect", run.name)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert '{"rows": 42}' in out  # the result
    assert "State history" in out
    assert out.index("Scheduled", out.index("State history")) < out.index("Running")
    assert "go" in out
    assert "Task runs" in out and "extract-0" in out and "2s" in out
    assert f"/runs/{run.id}" in out

    web = sluice(stack, "flow-run", "inspect", run.id, "--web")
    assert web.stdout.strip() == f"http://127.0.0.1:8480/runs/{run.id}"
    elsewhere = _cli.CliRunner().invoke(
        _cli.app,
        ["flow-run", "inspect", run.id[:8], "--web"],
        env={**stack.env, "SLUICE_UI_URL": "https://sluice.example/"},
    )
    assert elsewhere.stdout.strip() == f"https://sluice.example/runs/{run.id}"


def test_inspect_of_a_stored_result_and_an_unfinished_run(
    stack: Stack, client: SyncClient, flow: str
) -> None:
    waiting = client.create_flow_run(flow)
    out = sluice(stack, "flow-run", "inspect", waiting.id).stdout
    assert "not finished yet" in out
    stored = client.create_flow_run(flow)

    async def finish() -> None:
        async with Client(stack.settings) as c:
            await c.propose_state(stored.id, ProposedState(type=StateType.RUNNING))
            ref = StateDetails(result_ref="file:abc.json")
            await c.propose_state(stored.id, ProposedState(type=StateType.COMPLETED, details=ref))

    anyio.run(finish)
    assert "stored as file:abc.json" in sluice(stack, "flow-run", "inspect", stored.id).stdout


# --- a repeated idempotency key, did you mean -------------------------------------------------
def test_a_repeated_idempotency_key_says_so(stack: Stack, flow: str, unique: str) -> None:
    args = ["run", "--name", flow, "--idempotency-key", f"again-{unique}"]
    first = sluice(stack, *args, "--param", "a=1")
    assert first.exit_code == 0, first.output
    assert "Created flow run" in first.stdout
    again = sluice(stack, *args, "--param", "a=2", "--start-in", "1h")
    assert again.exit_code == 0, again.output
    assert "Created" not in again.stdout
    assert "already exists for this key; the new parameters and start time were not applied" in (
        again.stderr
    )
    as_json = sluice(stack, *args, "--json")
    assert json.loads(as_json.stdout)["parameters"]["a"] == 1  # stdout stays one document


def test_a_misspelled_deployment_or_flow_gets_a_suggestion(stack: Stack, flow: str) -> None:
    typo = f"{flow}/mian"
    assert_fails(sluice(stack, "run", "--name", typo), 1, "error:", f"did you mean '{flow}/main'")
    assert_fails(
        sluice(stack, "deployment", "inspect", flow[:-1] + "Z"), 1, f"did you mean '{flow}'"
    )
    listed = sluice(stack, "flow-run", "ls", "--flow", flow[:-1] + "Z")
    assert listed.exit_code == 0, listed.output
    assert "No flow runs match." in listed.stdout
    assert "Did you mean --flow " in listed.stdout and f"--flow {flow}" in listed.stdout


# --- shell completion ------------------------------------------------------------------------
def _complete(stack: Stack, words: str) -> list[str]:
    done = sluice_process(
        stack,
        _SLUICE_COMPLETE="complete_bash",
        COMP_WORDS=words,
        COMP_CWORD=str(len(words.split()) - 1),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_completion_of_state_and_deployment_names(stack: Stack, flow: str) -> None:
    assert _complete(stack, "sluice flow-run ls --state Canc") == ["Cancelling", "Cancelled"]
    assert f"{flow}/main" in _complete(stack, f"sluice deployment inspect {flow[:-2]}")
    assert f"{flow}/main" in _complete(stack, f"sluice run --name {flow}")


def test_completion_without_a_stack_offers_nothing(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SLUICE_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "SLUICE_HOME": str(tmp_path),
        "_SLUICE_COMPLETE": "complete_bash",
        "COMP_WORDS": "sluice deployment inspect x",
        "COMP_CWORD": "3",
    }
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == ""
    assert "Traceback" not in done.stderr


# --- pause and resume through the CLI, with a real scheduler ----------------------------------
def test_pause_removes_upcoming_runs_and_resume_makes_them_again(
    stack: Stack, client: SyncClient, unique: str
) -> None:
    name = f"hourly-{unique}/main"
    client.register_deployment(
        RegisterDeployment(
            name="main",
            flow_name=f"hourly-{unique}",
            queue=f"nobody-{unique}",
            schedules=[DeploymentSchedule(schedule=IntervalSchedule(interval=3600))],
        )
    )
    manual = sluice_json(stack, "run", "--name", name, "--start-in", "90m")

    def runs() -> list[dict]:
        return sluice_json(stack, "flow-run", "ls", "--deployment", name)["flow_runs"]

    def scheduled_keys() -> set[str] | None:
        listed = runs()
        keys = {r["idempotency_key"] for r in listed if r["id"] != manual["id"]}
        return keys if len(keys) >= 3 and manual["id"] in {r["id"] for r in listed} else None

    env = {**stack.process_env(), "SLUICE_LOG_LEVEL": "INFO"}
    with ServiceProcess(["-m", "services.scheduler"], env, "scheduler ready") as scheduler:
        scheduler.wait_ready()
        before = eventually(scheduled_keys, "the schedule's upcoming runs", timeout=60)

        paused = sluice(stack, "deployment", "pause", name)
        assert paused.exit_code == 0, paused.output
        eventually(
            lambda: [r["id"] for r in runs()] == [manual["id"]] or None,
            "the upcoming runs to be removed",
            timeout=60,
        )
        cancelled = sluice_json(stack, "flow-run", "ls", "--deployment", name, "-s", "Cancelled")
        assert cancelled["flow_runs"] == []  # removed, not left Cancelled

        resumed = sluice(stack, "deployment", "resume", name)
        assert resumed.exit_code == 0, resumed.output
        after = eventually(scheduled_keys, "the upcoming runs made again", timeout=60)
        assert after & before  # the same slots, under the same keys
        assert not any(key.endswith(":r1") for key in after)
    assert client.read_flow_run(manual["id"]).state.type is StateType.SCHEDULED
