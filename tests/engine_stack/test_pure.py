"""The pure parts: task keys, resume plans, retry requests, entrypoint parsing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine import flow, task
from engine._core.resume import plan_resume, rerun_keys_from, rerun_requested, retry_data
from engine._stack.entrypoint import load_entrypoint, split_target
from engine.exceptions import EntrypointError
from engine.results import NOT_PERSISTED
from shared.messages import FlowRunStateChanged, TaskRunRecord
from shared.models import FlowRun
from shared.states import State, StateDetails, StateType

from .conftest import FLOWS

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def state(type_: StateType, data: object = None, message: str | None = None) -> State:
    return State(type=type_, name=type_.value.title(), timestamp=NOW, data=data, message=message)


def record(key: str, st: State, attempt: int = 1, name: str | None = None) -> TaskRunRecord:
    task_name = key.split(":")[0]
    return TaskRunRecord(
        flow_run_id="f",
        task_run_id=f"{key}-{attempt}",
        task_key=key,
        task_name=task_name,
        name=name or f"{task_name}-0",
        state=st,
        flow_run_attempt=attempt,
    )


@task
def double(x: int) -> int:
    return 2 * x


@flow
def keyed() -> list[int]:
    first = double(1)
    mapped = [f.result() for f in double.map([1, 2, 3])]
    return [first, *mapped, double(5)]


def test_task_keys_count_calls_per_task_name_and_maps_once() -> None:
    result = keyed.run(return_tasks=[double])
    keys = [run.task_key for run in result.task_runs[double]]
    assert keys == ["double:0", "double:1[0]", "double:1[1]", "double:1[2]", "double:2"]
    assert keyed.run(return_tasks=[double]).task_runs[double][0].task_key == "double:0"


def test_the_latest_attempt_decides_and_any_completion_in_it_counts() -> None:
    done = state(StateType.COMPLETED, data=[1])
    plan = plan_resume(
        [
            record("a:0", done, attempt=1),
            record("b:0", done, attempt=1),
            record("b:0", state(StateType.RUNNING), attempt=2),  # re-run, never finished
            record("c:0", done, attempt=2),
            record("c:0", state(StateType.RUNNING), attempt=2),  # re-sent out of order
            record("d:0", state(StateType.COMPLETED, message=f"{NOT_PERSISTED}: no"), attempt=1),
        ]
    )
    assert set(plan.completed) == {"a:0", "c:0"}
    assert plan.reusable("a:0") is done and plan.reusable("b:0") is None


def test_a_result_ref_is_reusable_and_rerun_keys_are_not() -> None:
    stored = State(
        type=StateType.COMPLETED,
        name="Completed",
        timestamp=NOW,
        details=StateDetails(result_ref="object:sluice_results/x.json"),
    )
    plan = plan_resume([record("a:0", stored), record("b:0", stored)], rerun=["b:0"])
    assert plan.reusable("a:0") is stored and plan.reusable("b:0") is None


def test_rerun_keys_from_the_first_match_in_call_order() -> None:
    done = state(StateType.COMPLETED, 1)
    records = [
        record("extract:0", done),
        record("clean:0", done, name="clean-0"),
        record("clean:1", done, name="clean-1"),
        record("load:0", done),
    ]
    assert rerun_keys_from(records, "clean") == ["clean:0", "clean:1", "load:0"]
    assert rerun_keys_from(records, "clean:1") == ["clean:1", "load:0"]
    assert rerun_keys_from(records, "clean-1") == ["clean:1", "load:0"]
    with pytest.raises(ValueError, match="its tasks: clean, extract, load"):
        rerun_keys_from(records, "nope")


def _changed(state_: State, from_state: State) -> FlowRunStateChanged:
    run = FlowRun(
        id="f",
        name="n",
        flow_name="x",
        state=state_,
        created=NOW,
        updated=NOW,
        expected_start_time=NOW,
    )
    return FlowRunStateChanged(flow_run=run, revision=1, occurred=NOW, from_state=from_state)


def test_the_newest_retry_request_names_the_keys() -> None:
    failed = state(StateType.FAILED)
    asked = state(StateType.SCHEDULED, data=retry_data("clean", ["clean:0", "load:0"]))
    plain = state(StateType.SCHEDULED)
    in_process = state(StateType.SCHEDULED, data={"rerun_task_keys": ["ignored:0"]})
    running = state(StateType.RUNNING)
    assert rerun_requested([_changed(asked, failed)]) == ["clean:0", "load:0"]
    assert rerun_requested([_changed(asked, failed), _changed(plain, failed)]) == []
    # Only a SCHEDULED state that left a terminal one is a retry request.
    assert rerun_requested([_changed(asked, failed), _changed(in_process, running)]) == [
        "clean:0",
        "load:0",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("flows/a.py:main", ("flows/a.py", "main")),
        ("pkg.mod:my-flow", ("pkg.mod", "my-flow")),
        ("flows/a.py", ("flows/a.py", None)),
        ("C:\\flows\\a.py", ("C:\\flows\\a.py", None)),
    ],
)
def test_split_target(text: str, expected: tuple[str, str | None]) -> None:
    assert split_target(text) == expected


def test_entrypoints_resolve_against_the_base_then_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert load_entrypoint("two_flows.py:first", FLOWS).name == "first"
    monkeypatch.chdir(FLOWS)
    assert load_entrypoint("two_flows.py:second", tmp_path).name == "the-second"
    assert load_entrypoint("tests.engine_stack.flows.two_flows:first", FLOWS.parents[2]).name
    with pytest.raises(EntrypointError, match="names no function"):
        load_entrypoint("two_flows.py", FLOWS)
    with pytest.raises(EntrypointError, match=r"no module named 'no_such_pkg\.x'"):
        load_entrypoint("no_such_pkg.x:f", FLOWS)


attempts: list[int] = []


@flow(retries=1)
def flaky_keys() -> int:
    double(1)
    attempts.append(1)
    if len(attempts) == 1:
        raise RuntimeError("first body attempt fails")
    return double(2)


def test_a_retried_body_calls_its_tasks_with_the_same_keys() -> None:
    attempts.clear()
    result = flaky_keys.run(return_tasks=[double])
    assert result.result() == 4
    keys = [run.task_key for run in result.task_runs[double]]
    assert keys == ["double:0", "double:0", "double:1"]
