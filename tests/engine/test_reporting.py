"""The reporter seam (proposals and their answers), run loggers and log_prints."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from engine import states
from engine._core.logs import get_run_logger
from engine._core.reporting import Decision, LocalReporter, Proposal
from engine.exceptions import Abort, FlowRunFailed, MissingContextError
from engine.executors import ThreadPoolExecutor
from engine.flows import flow
from engine.tasks import task
from shared.states import StateType

ran = []


@flow(name="watched")
def watched() -> str:
    ran.append(1)
    return "done"


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()


def test_wait_sleeps_on_the_clock_then_proposes_again(runtime, reporter, clock) -> None:
    start = clock.now()
    current = states.Pending(timestamp=start)
    reporter.answers = [Proposal(Decision.WAIT, current, reason="slot busy", delay_seconds=30)]
    assert watched() == "done"
    proposed = [s.type for kind, _, s in reporter.events if kind == "flow_proposed"]
    assert proposed == [StateType.RUNNING, StateType.RUNNING, StateType.COMPLETED]
    assert clock.slept == [start + timedelta(seconds=30)]


def test_reject_of_running_ends_the_run_without_the_body(runtime, reporter) -> None:
    current = states.Cancelled(message="cancelled by a user")
    reporter.answers = [Proposal(Decision.REJECT, current, reason="run is cancelled")]
    state = watched(return_state=True)
    assert state is current and ran == []
    with pytest.raises(FlowRunFailed, match="cancelled by a user"):
        reporter.answers = [Proposal(Decision.REJECT, current)]
        watched()


def test_accept_may_return_another_state(runtime, reporter) -> None:
    renamed = states.Completed(data="other", message="the orchestrator's own")
    reporter.answers = [
        Proposal(Decision.ACCEPT, states.Running()),
        Proposal(Decision.ACCEPT, renamed),
    ]
    state = watched(return_state=True)
    assert state is renamed


def test_abort_stops_the_run(runtime, reporter) -> None:
    reporter.answers = [Proposal(Decision.ABORT, states.Pending(), reason="stale claim")]
    with pytest.raises(Abort, match="stale claim"):
        watched()
    assert ran == []
    assert [k for k, _, _ in reporter.events] == ["flow_created", "flow_proposed"]


def test_abort_at_completion_is_raised_even_with_return_state(runtime, reporter) -> None:
    reporter.answers = [
        Proposal(Decision.ACCEPT, states.Running()),
        Proposal(Decision.ABORT, states.Cancelled()),
    ]
    with pytest.raises(Abort):
        watched(return_state=True)
    assert ran == [1]


def test_local_reporter_accepts_everything() -> None:
    state = states.Running()
    answer = LocalReporter().propose_flow_state(None, state)  # type: ignore[arg-type]
    assert answer == Proposal(Decision.ACCEPT, state)


# --- logs --------------------------------------------------------------------------------------
def test_run_logger_tags_records_and_reaches_the_reporter(runtime, reporter) -> None:
    @task
    def noisy() -> None:
        get_run_logger().info("from the task")

    @flow(name="logging")
    def logging_flow() -> None:
        get_run_logger().warning("from the flow %s", "run", extra={"custom": 1})
        noisy()

    logging_flow()
    flow_rec, task_rec = reporter.records
    flow_run = next(iter(reporter.flow_runs.values()))
    assert flow_rec.getMessage() == "from the flow run" and flow_rec.custom == 1
    assert flow_rec.flow_run_id == flow_run.id and flow_rec.task_run_id is None
    assert task_rec.flow_run_id == flow_run.id
    assert task_rec.task_run_name == "noisy-0" and task_rec.task_run_id
    assert task_rec.levelno == logging.INFO


def test_run_records_propagate_to_python_logging(runtime, caplog) -> None:
    @flow
    def logging_flow() -> None:
        get_run_logger().info("visible")

    with caplog.at_level(logging.INFO, logger="sluice.runs"):
        logging_flow()
    assert [r.getMessage() for r in caplog.records] == ["visible"]


def test_get_run_logger_outside_a_run() -> None:
    with pytest.raises(MissingContextError):
        get_run_logger()


def test_log_prints_routes_print_to_the_run_logger(runtime, reporter, capsys) -> None:
    @task
    def shout(x: int) -> None:
        print("task says", x)

    @flow(log_prints=True, executor=ThreadPoolExecutor(2))
    def chatty() -> None:
        print("flow says hi")
        shout(1)
        shout.submit(2).wait()
        quiet()

    @flow(log_prints=False)
    def quiet() -> None:
        print("subflow prints plainly")

    chatty()
    messages = sorted(r.getMessage() for r in reporter.records)
    assert messages == ["flow says hi", "task says 1", "task says 2"]
    assert {r.task_run_name for r in reporter.records if r.task_run_name} == {"shout-0", "shout-1"}
    assert capsys.readouterr().out == "subflow prints plainly\n"
    print("outside a run")
    assert capsys.readouterr().out == "outside a run\n"


def test_subflow_inherits_log_prints(runtime, reporter) -> None:
    @flow
    def child() -> None:
        print("child")

    @flow(log_prints=True)
    def parent() -> None:
        child()

    parent()
    assert [r.getMessage() for r in reporter.records] == ["child"]
