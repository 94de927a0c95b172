"""A write of ``flow_runs`` read as a run event (``shared.runlog``), and the
bounded state history that lets a reader derive what it missed. Pure: no NATS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from services.orchestrator import rules
from shared import runlog
from shared.codec import encode
from shared.messages import (
    FlowRunCreated,
    FlowRunDeleted,
    FlowRunStateChanged,
    ProposedState,
    ProposeState,
)
from shared.models import FlowRun
from shared.states import StateDetails, StateType

from ._runs import scheduled_run

T0 = datetime(2030, 1, 1, tzinfo=UTC)
RUN_ID = "00000000-0000-4000-8000-000000000001"


def created() -> FlowRun:
    return scheduled_run(id=RUN_ID, name="n", deployment_id="d", at=T0)


def move(run: FlowRun, revision: int, proposed: ProposedState, **kw: object) -> FlowRun:
    """The run after the orchestrator accepted ``proposed`` on it (read at ``revision``)."""
    now = run.updated + timedelta(seconds=1)
    ctx = rules.Context(
        run=run, proposal=ProposeState(id=run.id, state=proposed, **kw), now=now, revision=revision
    )
    assert rules.decide(ctx).status.value == "ACCEPT"
    return rules.apply(ctx, rules.build_state(ctx))


def test_a_value_is_created_or_changed_and_a_marker_is_deleted() -> None:
    run = created()
    first = runlog.decode_entry(RUN_ID, encode(run), None, 1, T0)
    assert first == FlowRunCreated(flow_run=run, revision=1, occurred=T0)
    pending = move(run, 1, ProposedState(type=StateType.PENDING), transition_id="t1", runner="r")
    changed = runlog.decode_entry(RUN_ID, encode(pending), {}, 2, T0)
    assert isinstance(changed, FlowRunStateChanged)
    assert (changed.revision, changed.transition_id) == (2, "t1")
    assert changed.from_state == run.state
    assert changed.occurred == pending.updated
    marker = {"KV-Operation": "DEL", "Sluice-Reason": "why"}
    gone = runlog.decode_entry(RUN_ID, encode(pending), marker, 3, T0)
    assert gone == FlowRunDeleted(
        flow_run_id=RUN_ID, revision=3, occurred=T0, flow_run=pending, reason="why"
    )
    purged = runlog.decode_entry(RUN_ID, b"", {"KV-Operation": "PURGE"}, 4, T0)
    assert purged == FlowRunDeleted(flow_run_id=RUN_ID, revision=4, occurred=T0)


def test_a_value_that_is_not_a_run_is_a_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        runlog.decode_entry(RUN_ID, b'{"state": "COMPLETED"}', None, 1, T0)
    with pytest.raises(msgspec.DecodeError):
        runlog.decode_entry(RUN_ID, b"", None, 1, T0)


def test_a_reader_that_saw_only_the_newest_write_gets_every_transition_it_missed() -> None:
    run = created()
    pending = move(run, 1, ProposedState(type=StateType.PENDING), runner="r")
    running = move(pending, 2, ProposedState(type=StateType.RUNNING), attempt=1)
    cancelling = move(running, 3, ProposedState(type=StateType.CANCELLING))
    newest = runlog.event_for(cancelling, 4)
    everything = runlog.transitions(newest)
    assert isinstance(everything[0], FlowRunCreated)
    assert [e.flow_run.state.type for e in everything] == [
        StateType.SCHEDULED,
        StateType.PENDING,
        StateType.RUNNING,
        StateType.CANCELLING,
    ]
    assert [e.revision for e in everything] == [1, 2, 3, 4]
    assert [getattr(e, "from_state", None) for e in everything[1:]] == [
        run.state,
        pending.state,
        running.state,
    ]
    # Seen up to revision 2 (Pending): Running and Cancelling are what it missed.
    missed = runlog.transitions(newest, after=2)
    assert [e.flow_run.state.type for e in missed] == [StateType.RUNNING, StateType.CANCELLING]
    assert runlog.transitions(newest, after=4) == [newest]
    assert runlog.states_of(cancelling) == [
        run.state,
        pending.state,
        running.state,
        cancelling.state,
    ]


def test_the_history_is_bounded_and_keeps_no_results_or_tracebacks() -> None:
    run = created()
    revision = 1
    for i in range(rules.HISTORY + 8):
        state = StateType.RUNNING if i % 2 else StateType.PAUSED
        run = move(run, revision, ProposedState(type=state))
        revision += 1
    assert len(run.history) == rules.HISTORY
    assert run.history_dropped == 8  # 40 states before the current one, 32 kept
    assert [p.revision for p in run.history] == list(range(revision - rules.HISTORY, revision))
    # Tracebacks and a finished state's result stay with the current state only.
    failed = ProposedState(
        type=StateType.FAILED,
        data={"error": "x" * 100},
        details=StateDetails(traceback="Traceback ...", error_type="ValueError"),
    )
    run = move(run, revision, failed)
    retry = ProposedState(
        type=StateType.SCHEDULED, name="AwaitingRetry", data={"rerun_task_keys": ["a:0"]}
    )
    run = move(run, revision + 1, retry, retry=True)
    run = move(run, revision + 2, ProposedState(type=StateType.PENDING), runner="r")
    kept_failed, kept_retry = run.history[-2].state, run.history[-1].state
    assert kept_failed.type is StateType.FAILED
    assert (kept_failed.data, kept_failed.details.traceback) == (None, None)
    assert kept_failed.details.error_type == "ValueError"
    assert kept_retry.data == {"rerun_task_keys": ["a:0"]}  # a retry request stays readable
