"""``sluice run --path/--module`` (local code, here) and ``--execute`` (agentless), and
the configured-stack rule for plain flow calls."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from engine.cli import app
from engine.sync import SyncClient
from services.dev import free_port
from shared.errors import StackUnavailable
from shared.states import StateType

from .conftest import FLOWS, Stack
from .flows import pipeline

RUN_ID = re.compile(r"\(([0-9a-f-]{36})\) ended")


def sluice(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture
def no_stack(tmp_path: Path) -> dict[str, str | None]:
    return {"SLUICE_NATS_URL": None, "SLUICE_HOME": str(tmp_path / "home")}


def test_path_runs_a_flow_here_without_a_stack(no_stack: dict[str, str | None]) -> None:
    done = sluice(no_stack, "run", "--path", f"{FLOWS}/two_flows.py:the-second", "-p", "n=41")
    assert done.exit_code == 0, done.output
    assert "Completed" in done.stdout and "result: 42" in done.stdout

    chosen_by_variable = sluice(no_stack, "run", "--path", f"{FLOWS}/two_flows.py:first")
    assert chosen_by_variable.exit_code == 0 and "result: 'first'" in chosen_by_variable.stdout


def test_path_needs_a_choice_between_several_flows(no_stack: dict[str, str | None]) -> None:
    done = sluice(no_stack, "run", "--path", f"{FLOWS}/two_flows.py")
    assert done.exit_code == 1
    assert "first ('first')" in done.stderr and "second ('the-second')" in done.stderr
    missing = sluice(no_stack, "run", "--path", f"{FLOWS}/nowhere.py")
    assert missing.exit_code == 1 and "no such flow file" in missing.stderr


def test_path_exit_status_follows_the_final_state(no_stack: dict[str, str | None]) -> None:
    failed = sluice(no_stack, "run", "--path", f"{FLOWS}/pipeline.py:failing")
    assert failed.exit_code == 1
    assert "Failed" in failed.stdout and "the flow failed on purpose" in failed.stdout
    bad_param = sluice(no_stack, "run", "--path", f"{FLOWS}/two_flows.py:second", "-p", "n=x")
    assert bad_param.exit_code == 1 and "parameter 'n'" in bad_param.stdout


def test_module_runs_a_flow_from_an_importable_module(no_stack: dict[str, str | None]) -> None:
    done = sluice(no_stack, "run", "--module", "tests.engine_stack.flows.two_flows:first", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["state"]["type"] == "COMPLETED"


def test_local_options_do_not_mix_with_deployment_options(no_stack: dict[str, str | None]) -> None:
    both = sluice(no_stack, "run", "--path", "x.py", "--name", "a/b")
    assert both.exit_code == 2
    watch = sluice(no_stack, "run", "--path", "x.py", "--watch")
    assert watch.exit_code == 2 and "--watch" in watch.output


def test_path_reports_to_the_stack_when_configured(stack: Stack, client: SyncClient) -> None:
    done = sluice(stack.env, "run", "--path", f"{FLOWS}/pipeline.py:hello", "-p", "name=cli")
    assert done.exit_code == 0, done.output
    found = RUN_ID.search(done.stdout)
    assert found, done.stdout
    run = client.read_flow_run(found[1])
    assert run.flow_name == "hello" and run.agentless and run.deployment_id is None
    assert run.state.type is StateType.COMPLETED
    assert run.state.data == {"greetings": ["hello cli"] * 2, "times": 2}
    assert len(stack.final_records(run.id)) == 2


def test_execute_runs_an_agentless_run_here(stack: Stack, client: SyncClient, deploy) -> None:
    deployment = deploy("hello", "pipeline.py:hello")
    done = sluice(stack.env, "run", "--name", deployment.full_name, "-p", "name=x", "--execute")
    assert done.exit_code == 0, done.output
    run = client.read_flow_run(RUN_ID.search(done.stdout)[1])  # type: ignore[index]
    assert run.agentless and run.deployment_id == deployment.id
    assert run.state.type is StateType.COMPLETED and run.attempt == 1


def test_execute_of_a_failing_flow_exits_1(stack: Stack, client: SyncClient, deploy) -> None:
    deployment = deploy("failing", "pipeline.py:failing")
    done = sluice(stack.env, "run", "--id", deployment.id, "--execute", "--json")
    assert done.exit_code == 1
    run = json.loads(done.stdout)
    assert run["state"]["type"] == "FAILED" and run["agentless"] is True
    assert "the flow failed on purpose" in run["state"]["message"]
    assert client.read_flow_run(run["id"]).state.type is StateType.FAILED


def test_a_flow_call_reports_when_sluice_nats_url_is_set(
    stack: Stack, client: SyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    result = pipeline.parent.run({"x": 1})
    assert result.result() == 2 + 4
    run = client.read_flow_run(result.id)  # the id the stack assigned
    assert run.state.type is StateType.COMPLETED and run.state.data == 6
    children = client.list_flow_runs(parent_flow_run_id=result.id).flow_runs
    assert sorted(c.state.data for c in children) == [2, 4]


def test_an_async_flow_call_reports_too(
    stack: Stack, client: SyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    result = asyncio.run(pipeline.async_parent.run_async({"x": 1}))
    assert result.result() == (3 + 4) + 4
    assert client.read_flow_run(result.id).state.data == 11
    records = stack.final_records(result.id)
    assert sorted(records) == ["add_one:0", "add_one:1[0]", "add_one:1[1]"]
    (child,) = client.list_flow_runs(parent_flow_run_id=result.id).flow_runs
    assert child.state.data == 4


def test_a_configured_but_unreachable_stack_fails_the_call(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLUICE_NATS_URL", f"nats://127.0.0.1:{free_port()}")
    monkeypatch.setenv("SLUICE_HOME", str(tmp_path))
    with pytest.raises(StackUnavailable, match="SLUICE_NATS_URL is set"):
        pipeline.child(1)


def _sluice_process(env: dict[str, str | None], *args: str) -> subprocess.CompletedProcess[str]:
    """The real console program: its root log handler is what printed lines twice."""
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        env=full,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_path_prints_each_log_line_once(no_stack: dict[str, str | None]) -> None:
    done = _sluice_process(no_stack, "run", "--path", f"{FLOWS}/pipeline.py:hello", "-p", "name=z")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("starting for z") == 1, done.stderr


def test_execute_prints_each_log_line_once(stack: Stack, deploy) -> None:
    deployment = deploy("hello-once", "pipeline.py:hello")
    done = _sluice_process(
        stack.env, "run", "--name", deployment.full_name, "-p", "name=y", "--execute"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.count("starting for y") == 1, done.stderr
