"""The checker itself: it must see each kind of violation (pure, no NATS)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from services.orchestrator import rules
from shared import runlog
from shared.messages import (
    FlowRunCreated,
    FlowRunStateChanged,
    ProposedState,
    ProposeState,
    SlotLease,
)
from shared.models import Deployment, FlowRun
from shared.states import State, StateDetails, StateType

from ._bodies import Body, check_bodies
from ._checker import Report, Snapshot, check, max_overlap, replayed
from ._history import History, Op

T0 = datetime(2030, 1, 1, tzinfo=UTC)
DEP = "dep-1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def state(type_: StateType, t: float) -> State:
    return State(
        type=type_,
        name=type_.value.title(),
        timestamp=at(t),
        details=StateDetails(scheduled_time=at(0))
        if type_ is StateType.SCHEDULED
        else StateDetails(),
    )


def path(run_id: str, *steps: tuple[StateType, float], key: str | None = None) -> list:
    """Events of a run that went through ``steps``, as the orchestrator writes them."""
    run = FlowRun(
        id=run_id,
        name=run_id,
        flow_name="f",
        deployment_id=DEP,
        idempotency_key=key,
        state=state(StateType.SCHEDULED, 0),
        created=at(0),
        updated=at(0),
        expected_start_time=at(0),
    )
    events: list = [FlowRunCreated(flow_run=run, revision=1, occurred=at(0))]
    for i, (type_, t) in enumerate(steps):
        before = run
        attempt = run.attempt + (type_ is StateType.PENDING)
        run = msgspec.structs.replace(
            run,
            state=state(type_, t),
            attempt=attempt,
            updated=at(t),
            runner="r" if attempt else None,
        )
        events.append(
            FlowRunStateChanged(
                flow_run=run, revision=i + 2, occurred=at(t), from_state=before.state
            )
        )
    return events


def snapshot(*runs: list, limit: int | None = None) -> Snapshot:
    snap = Snapshot()
    for events in runs:
        last = events[-1]
        snap.runs[last.flow_run.id] = last.flow_run
        snap.revisions[last.flow_run.id] = last.revision
        snap.events[last.flow_run.id] = events
    snap.deployments[DEP] = Deployment(
        id=DEP, name="d", flow_name="f", concurrency_limit=limit, created=T0, updated=T0
    )
    return snap


OK = ((StateType.PENDING, 1), (StateType.RUNNING, 2), (StateType.COMPLETED, 5))


def test_a_clean_history_passes() -> None:
    report = check(History(), snapshot(path("a", *OK), path("b", *OK), limit=2))
    assert report.violations == []
    assert report.max_running == {DEP: 2}


def test_a_lost_acknowledged_create_is_found() -> None:
    history = History([Op(kind="create", key="k", invoked=0, outcome="ok", run_id="ghost")])
    assert "lost" in check(history, snapshot(path("a", *OK))).violations[0]


def test_two_runs_for_one_key_are_found() -> None:
    snap = snapshot(path("a", *OK, key="same"), path("b", *OK, key="same"))
    assert any("idempotency key 'same'" in v for v in check(History(), snap).violations)


def test_an_illegal_path_is_found() -> None:
    events = path("a", (StateType.PENDING, 1), (StateType.COMPLETED, 2), (StateType.RUNNING, 3))
    violations = check(History(), snapshot(events)).violations
    assert any("illegal Completed -> Running" in v for v in violations), violations
    twice = path("b", (StateType.PENDING, 1), (StateType.PENDING, 2))
    assert any(
        "illegal Pending -> Pending" in v for v in check(History(), snapshot(twice)).violations
    )


def test_too_many_running_at_once_is_found() -> None:
    late = ((StateType.PENDING, 3), (StateType.RUNNING, 4), (StateType.COMPLETED, 6))
    snap = snapshot(path("a", *OK), path("b", *late), limit=1)
    violations = check(History(), snap).violations
    assert len(violations) == 1, violations
    assert violations[0].startswith(f"deployment {DEP}: 2 runs Running at once, limit 1 (a: ")
    assert "; b: SCHEDULED a0 - " in violations[0]  # each run's path is shown
    after = ((StateType.PENDING, 5), (StateType.RUNNING, 5), (StateType.COMPLETED, 6))
    assert check(History(), snapshot(path("a", *OK), path("b", *after), limit=1)).violations == []


def test_a_leaked_slot_and_a_missing_event_are_found() -> None:
    snap = snapshot(path("a", *OK), limit=1)
    snap.slots[DEP] = [SlotLease(deployment_id=DEP, flow_run_id="a")]
    snap.revisions["a"] = 99
    violations = check(History(), snap).violations
    assert any("slot held by run a (Completed)" in v for v in violations)
    assert any("revision 99) has no event" in v for v in violations)


def test_max_overlap_closes_before_it_opens() -> None:
    assert max_overlap([(at(0), at(1)), (at(1), at(2)), (at(1.5), None)]) == 2


# --- the body journal (tests.faults._bodies) -------------------------------------------
def body(run_id: str, attempt: int, start: float, last: float) -> Body:
    return Body(run_id, attempt, at(start).timestamp(), at(last).timestamp())


def judge(bodies: list[Body], snap: Snapshot) -> list[str]:
    return check_bodies(bodies, snap, Report())


def test_clean_bodies_pass() -> None:
    snap = snapshot(path("a", *OK), path("b", *OK), limit=2)
    assert judge([body("a", 1, 2.1, 4.9), body("b", 1, 2.1, 4.9)], snap) == []


def test_a_body_after_crashed_or_cancelled_is_found() -> None:
    crashed = path("a", (StateType.PENDING, 1), (StateType.RUNNING, 2), (StateType.CRASHED, 3))
    violations = judge([body("a", 1, 2.1, 3.5)], snapshot(crashed))
    assert violations == ["run a attempt 1: body ran 0.500s after it was marked Crashed"]
    cancelled = path(
        "b",
        (StateType.PENDING, 1),
        (StateType.RUNNING, 2),
        (StateType.CANCELLING, 3),
        (StateType.CANCELLED, 4),
    )
    assert judge([body("b", 1, 2.1, 3.9)], snapshot(cancelled)) == []
    assert "marked Cancelled" in judge([body("b", 1, 2.1, 4.2)], snapshot(cancelled))[0]


def test_more_bodies_than_the_limit_are_found_even_when_states_say_otherwise() -> None:
    """States show one Running at a time; the journal shows two bodies at once."""
    first = path("a", (StateType.PENDING, 1), (StateType.RUNNING, 2), (StateType.CRASHED, 4))
    second = path("b", (StateType.PENDING, 4), (StateType.RUNNING, 4.5), (StateType.COMPLETED, 6))
    snap = snapshot(first, second, limit=1)
    assert check(History(), snap).violations == []
    bodies = [body("a", 1, 2.1, 3.9), body("b", 1, 3.0, 5.9)]  # b's body began before a's stopped
    assert f"deployment {DEP}: 2 bodies executing at once, limit 1" in judge(bodies, snap)


def test_a_body_under_two_claims_is_found() -> None:
    twice = path(
        "a",
        (StateType.PENDING, 1),
        (StateType.RUNNING, 2),
        (StateType.CRASHED, 3),
        (StateType.SCHEDULED, 4),
        (StateType.PENDING, 5),
        (StateType.RUNNING, 6),
        (StateType.COMPLETED, 7),
    )
    snap = snapshot(twice)
    retried = [body("a", 1, 2.1, 2.9), body("a", 2, 6.1, 6.9)]
    assert judge(retried, snap) == []  # one after the other, and the run was retried
    overlapping = [body("a", 1, 2.1, 6.5), body("a", 2, 6.1, 6.9)]
    assert any("bodies of attempts [1, 2] overlap" in v for v in judge(overlapping, snap))
    never_retried = snapshot(path("b", *OK))
    violations = judge([body("b", 1, 2.1, 2.5), body("b", 2, 3.0, 4.0)], never_retried)
    assert any("though it was never retried" in v for v in violations)


def _moved(run: FlowRun, revision: int, proposed: ProposedState, **kw: object) -> FlowRun:
    ctx = rules.Context(
        run=run,
        proposal=ProposeState(id=run.id, state=proposed, **kw),
        now=run.updated + timedelta(seconds=1),
        revision=revision,
    )
    return rules.apply(ctx, rules.build_state(ctx))


def test_a_path_is_rebuilt_from_the_newest_write_and_judged() -> None:
    """The stream holds each run's newest write only: the checker judges the path
    its history records, each earlier run rebuilt with the rules' own apply."""
    run = path("a")[0].flow_run
    revision = 1
    for proposed, kw in [
        (ProposedState(type=StateType.PENDING), {"runner": "r", "transition_id": "t1"}),
        (ProposedState(type=StateType.RUNNING), {"attempt": 1, "transition_id": "t2"}),
        (ProposedState(type=StateType.COMPLETED), {"attempt": 1, "transition_id": "t3"}),
    ]:
        run = _moved(run, revision, proposed, **kw)
        revision += 1
    events = replayed(runlog.event_for(run, revision))
    assert [e.flow_run.attempt for e in events] == [0, 1, 1, 1]
    assert [e.revision for e in events] == [1, 2, 3, 4]
    assert check(History(), snapshot(events)).violations == []
    # A stored attempt the path does not count up to is found ...
    miscounted = replayed(runlog.event_for(msgspec.structs.replace(run, attempt=3), revision))
    violations = check(History(), snapshot(miscounted)).violations
    assert any("moved the attempt 1->3" in v for v in violations), violations
    # ... and so is an illegal step inside the history.
    past = [
        *run.history[:2],
        msgspec.structs.replace(run.history[2], state=state(StateType.COMPLETED, 3)),
    ]
    illegal = msgspec.structs.replace(run, history=past, state=state(StateType.RUNNING, 4))
    violations = check(
        History(), snapshot(replayed(runlog.event_for(illegal, revision)))
    ).violations
    assert any("illegal Completed -> Running" in v for v in violations), violations
