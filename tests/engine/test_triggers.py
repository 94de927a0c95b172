"""Triggers as pure functions, and what an unmet trigger does to a task run."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine import states, triggers
from engine.exceptions import TriggerFailedError, UpstreamFailed
from engine.flows import flow
from engine.tasks import task
from shared.states import StateType

NOW = datetime(2030, 1, 1, tzinfo=UTC)
OK = states.Completed(timestamp=NOW)
CACHED = states.Cached(cache_key="k", cache_expiration=None, timestamp=NOW)
BAD = states.Failed(message="boom", timestamp=NOW)
CRASHED = states.Crashed(message="killed", timestamp=NOW)
NOT_READY = states.NotReady(message="upstream failed", timestamp=NOW)


@pytest.mark.parametrize(
    ("trigger", "upstream", "expected"),
    [
        (triggers.all_successful, {"a": OK, "b": CACHED}, True),
        (triggers.all_successful, {"a": OK, "b": BAD}, False),
        (triggers.all_successful, {"a": NOT_READY}, False),
        (triggers.all_finished, {"a": BAD, "b": CRASHED}, True),
        (triggers.always_run, {"a": OK}, True),
        (triggers.any_failed, {"a": OK, "b": CRASHED}, True),
        (triggers.any_failed, {"a": OK, "b": NOT_READY}, True),
        (triggers.any_failed, {"a": OK, "b": CACHED}, False),
        (triggers.all_failed, {"a": BAD, "b": NOT_READY}, True),
        (triggers.all_failed, {"a": BAD, "b": OK}, False),
        (triggers.any_successful, {"a": BAD, "b": OK}, True),
        (triggers.any_successful, {"a": BAD, "b": CRASHED}, False),
    ],
)
def test_trigger_functions(trigger, upstream, expected) -> None:
    assert trigger(upstream) is expected


@task
def ok() -> int:
    return 1


@task
def fail() -> int:
    raise ValueError("upstream broke")


def _run_with(trigger, upstream_tasks):
    """Run a flow where `downstream` waits for the given upstream tasks; its final state."""
    downstream = task(lambda: "ran", name="downstream", trigger=trigger)

    @flow
    def pipeline():
        futures = [t.submit() for t in upstream_tasks]
        return downstream.submit(wait_for=futures).wait()

    return pipeline()


@pytest.mark.parametrize(
    ("trigger", "upstream_tasks"),
    [
        (triggers.all_successful, [ok, ok]),
        (triggers.all_finished, [ok, fail]),
        (triggers.always_run, [fail]),
        (triggers.any_failed, [ok, fail]),
        (triggers.all_failed, [fail, fail]),
        (triggers.any_successful, [fail, ok]),
    ],
)
def test_met_trigger_runs_the_task(runtime, trigger, upstream_tasks) -> None:
    state = _run_with(trigger, upstream_tasks)
    assert state.type is StateType.COMPLETED
    assert state.data == "ran"


def test_upstream_failure_propagates_as_not_ready(runtime) -> None:
    state = _run_with(triggers.all_successful, [ok, fail])
    assert (state.type, state.name) == (StateType.PENDING, states.NOT_READY)
    assert "fail-0" in state.message and "upstream broke" in state.message
    assert "ok-0" not in state.message  # only the upstreams that caused it


@pytest.mark.parametrize(
    ("trigger", "upstream_tasks", "named", "not_named"),
    [
        (triggers.any_failed, [ok, ok], ["ok-0", "ok-1"], []),
        (triggers.all_failed, [fail, ok], ["ok-0"], ["fail-0"]),
        (triggers.any_successful, [fail, fail], ["fail-0", "fail-1"], []),
    ],
)
def test_unmet_trigger_fails_with_trigger_failed(
    runtime, trigger, upstream_tasks, named, not_named
) -> None:
    state = _run_with(trigger, upstream_tasks)
    assert (state.type, state.name) == (StateType.FAILED, states.TRIGGER_FAILED)
    assert trigger.__name__ in state.message
    for name in named:
        assert name in state.message
    for name in not_named:
        assert name not in state.message


def test_custom_trigger(runtime) -> None:
    def only_if_two(upstream) -> bool:
        return len(upstream) == 2

    assert _run_with(only_if_two, [fail, fail]).type is StateType.COMPLETED
    state = _run_with(only_if_two, [ok])
    assert state.name == states.TRIGGER_FAILED and "only_if_two" in state.message


def test_results_of_unrun_tasks_raise(runtime) -> None:
    cleanup = task(lambda: None, name="cleanup", trigger=triggers.any_failed)
    after = task(lambda x: x, name="after")

    @flow
    def pipeline():
        f = fail.submit()
        skipped = after.submit(f)
        not_needed = cleanup.submit(wait_for=[ok.submit()])
        with pytest.raises(UpstreamFailed, match="fail-0"):
            skipped.result()
        with pytest.raises(TriggerFailedError, match="any_failed"):
            not_needed.result()
        return "checked"

    assert pipeline() == "checked"


def test_all_finished_task_gets_the_upstream_exception(runtime) -> None:
    seen = []
    report = task(lambda value: seen.append(value), name="report", trigger=triggers.all_finished)

    @flow
    def pipeline():
        report(fail.submit())
        return "done"

    assert pipeline() == "done"
    assert isinstance(seen[0], ValueError) and str(seen[0]) == "upstream broke"


def test_trigger_failed_alone_does_not_fail_the_flow(runtime) -> None:
    on_failure = task(lambda: None, name="on_failure", trigger=triggers.any_failed)

    @flow
    def pipeline() -> None:
        on_failure.submit(wait_for=[ok.submit()])

    assert pipeline(return_state=True).type is StateType.COMPLETED


def test_not_ready_is_reported(runtime, reporter) -> None:
    after = task(lambda x: x, name="after")

    @flow
    def pipeline() -> None:
        after.submit(fail.submit())

    assert pipeline(return_state=True).type is StateType.FAILED
    assert [s.name for s in reporter.task_states("after-0")] == ["Pending", "NotReady"]
