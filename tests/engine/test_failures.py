"""What a failure leaves behind: the traceback in the state, ERROR and retry lines in the log."""

from __future__ import annotations

import logging
import sys

from engine import states
from engine.flows import flow
from engine.tasks import task
from shared.states import MAX_TRACEBACK_CHARS, StateType

HERE = __file__


def _open_table(name: str) -> None:
    raise ValueError(f"table {name!r} does not exist")  # the line tracebacks must name


RAISE_LINE = _open_table.__code__.co_firstlineno + 1


@task(retries=2, retry_delay_seconds=2)
def extract() -> None:
    _open_table("orders")


@flow(name="broken-pipeline")
def broken() -> None:
    extract.submit()


def test_a_failed_task_keeps_type_and_traceback_in_its_states(runtime, reporter) -> None:
    state = broken(return_state=True)
    assert state.type is StateType.FAILED
    # The flow run keeps the traceback of the task run that made it fail.
    assert state.details.error_type == "ValueError"
    tb = state.details.traceback or ""
    assert f'File "{HERE}", line {RAISE_LINE}, in _open_table' in tb
    assert "in extract" in tb
    assert tb.rstrip().endswith("ValueError: table 'orders' does not exist")
    assert "engine/_core/drive.py" not in tb  # the engine's own calling frames are left out
    task_states = reporter.task_states("extract-0")
    final = task_states[-1]
    assert final.type is StateType.FAILED and final.details.traceback == tb
    # Each failed attempt keeps its own failure with the AwaitingRetry that follows it.
    waiting = [s for s in task_states if s.name == "AwaitingRetry"]
    assert [s.details.retry_count for s in waiting] == [1, 2]
    assert all(s.details.error_type == "ValueError" and s.details.traceback for s in waiting)


@task
def transform() -> None:
    _open_table("events")


@flow(name="waits-on-a-failed-task")
def waits() -> None:
    transform.submit().result()  # the task's error comes up through the future


def test_a_flow_that_reraises_a_task_error_shows_its_and_the_tasks_frames_only(
    runtime, reporter
) -> None:
    tb = waits(return_state=True).details.traceback or ""
    assert "in waits" in tb and "in transform" in tb and f"line {RAISE_LINE}" in tb
    # Not the engine's frames the error passed through between the two.
    assert "engine/futures.py" not in tb and "engine/_core/" not in tb, tb


def test_the_log_says_each_retry_and_the_failure_with_its_traceback(runtime, reporter) -> None:
    broken(return_state=True)
    lines = [(r.levelno, r.getMessage(), r) for r in reporter.records]
    retries = [m for level, m, _ in lines if level == logging.WARNING]
    assert retries == [
        "task extract-0 failed (ValueError: table 'orders' does not exist); retry 1 of 2 in 2.0 s",
        "task extract-0 failed (ValueError: table 'orders' does not exist); retry 2 of 2 in 2.0 s",
    ]
    errors = [r for level, _, r in lines if level == logging.ERROR]
    task_error = errors[0]
    assert task_error.getMessage() == (
        "task extract-0 failed: ValueError: table 'orders' does not exist"
    )
    assert task_error.task_run_name == "extract-0"  # type: ignore[attr-defined]
    extract_id = next(r.id for r in reporter.task_runs.values() if r.name == "extract-0")
    assert task_error.task_run_id == extract_id  # type: ignore[attr-defined]
    assert task_error.exc_info is not None and isinstance(task_error.exc_info[1], ValueError)
    # The flow run's own line names the failed task; its traceback was shown already.
    flow_error = errors[1]
    assert flow_error.task_run_name is None  # type: ignore[attr-defined]
    assert "extract-0" in flow_error.getMessage() and flow_error.exc_info is None


def test_every_run_record_carries_the_task_run_id_and_name(runtime, reporter) -> None:
    broken(return_state=True)
    task_ids = {r.id: r.name for r in reporter.task_runs.values()}
    for record in reporter.records:
        task_run_id = record.task_run_id  # type: ignore[attr-defined]
        if task_run_id is not None:
            assert task_ids[task_run_id] == record.task_run_name  # type: ignore[attr-defined]
    assert any(r.task_run_id for r in reporter.records)  # type: ignore[attr-defined]


def test_starts_and_ends_are_logged_at_debug_only_when_asked(runtime, reporter) -> None:
    broken(return_state=True)
    assert not [r for r in reporter.records if r.levelno == logging.DEBUG]
    runs_logger = logging.getLogger("sluice.runs")
    before = runs_logger.level
    runs_logger.setLevel(logging.DEBUG)
    try:
        reporter.records.clear()
        broken(return_state=True)
    finally:
        runs_logger.setLevel(before)
    debug = [r.getMessage() for r in reporter.records if r.levelno == logging.DEBUG]
    assert "task extract-0 started" in debug
    assert "task extract-0 started (retry 2)" in debug
    assert "task extract-0 ended Failed" in debug
    assert any(m.startswith("flow run broken-pipeline-") and m.endswith("ended Failed")
               for m in debug)  # fmt: skip


def test_a_flow_body_that_raises_keeps_its_own_traceback(runtime, reporter) -> None:
    @flow(name="raises-itself")
    def raises_itself() -> None:
        _open_table("customers")

    state = raises_itself(return_state=True)
    assert state.type is StateType.FAILED
    assert f"line {RAISE_LINE}, in _open_table" in (state.details.traceback or "")
    errors = [r for r in reporter.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None


def _ping(n: int) -> None:
    if n == 0:
        raise RuntimeError("at the bottom")
    _pong(n - 1)  # alternating, so Python does not fold the frames as repeated


def _pong(n: int) -> None:
    _ping(n)


def test_a_long_traceback_keeps_the_frames_nearest_the_raise() -> None:
    limit = sys.getrecursionlimit()
    try:
        _ping(min(300, (limit - 100) // 2))
    except RuntimeError as exc:
        error = exc
    text = states.format_traceback(error)
    assert len(text) <= MAX_TRACEBACK_CHARS
    assert text.startswith("Traceback (most recent call last):\n  ... ")
    assert "characters of outer frames left out" in text
    assert text.rstrip().endswith("RuntimeError: at the bottom")
    assert 'raise RuntimeError("at the bottom")' in text
    # Cut at a frame boundary: the line after the marker starts a frame.
    assert text.splitlines()[2].startswith('  File "')
    failed = states.Failed(message="x", error=error)
    assert failed.details.traceback == text and failed.details.error_type == "RuntimeError"


def test_a_state_without_an_exception_has_no_traceback_on_the_wire() -> None:
    import msgspec

    encoded = msgspec.json.encode(states.Failed(message="no exception"))
    assert b"traceback" not in encoded and b"error_type" not in encoded
