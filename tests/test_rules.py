"""The orchestration-rule table, as pure functions: no NATS, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from services.orchestrator import rules
from shared.messages import Decision, ProposedState, ProposeState
from shared.models import FlowRun
from shared.states import State, StateDetails, StateType

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
RUN_ID = "00000000-0000-4000-8000-000000000001"
T = StateType


def run_in(
    type_: StateType,
    *,
    attempt: int = 1,
    scheduled: datetime = NOW,
    recent: tuple[str, ...] = (),
    runner: str | None = "r1",
) -> FlowRun:
    return FlowRun(
        id=RUN_ID,
        name="brave-otter",
        flow_name="f",
        deployment_id="d",
        state=State(
            type=type_,
            name=type_.value.title(),
            timestamp=NOW,
            details=StateDetails(scheduled_time=scheduled),
        ),
        created=NOW,
        updated=NOW,
        expected_start_time=scheduled,
        attempt=attempt,
        runner=runner,
        recent_transitions=list(recent),
    )


def decide(run: FlowRun, to: StateType, **kw: object) -> rules.Outcome:
    proposal = ProposeState(id=run.id, state=ProposedState(type=to), **kw)  # type: ignore[arg-type]
    return rules.decide(rules.Context(run=run, proposal=proposal, now=NOW))


# (current, proposed, extra proposal fields, expected decision)
TABLE = [
    # claiming
    (T.SCHEDULED, T.PENDING, {}, Decision.ACCEPT),
    (T.PENDING, T.PENDING, {}, Decision.ABORT),
    (T.RUNNING, T.PENDING, {}, Decision.ABORT),
    (T.CANCELLING, T.PENDING, {}, Decision.ABORT),
    (T.PAUSED, T.PENDING, {}, Decision.ABORT),
    # ordinary progress, reported by the claim's holder
    (T.PENDING, T.RUNNING, {"attempt": 1}, Decision.ACCEPT),
    (T.SCHEDULED, T.RUNNING, {}, Decision.ACCEPT),
    (T.RUNNING, T.COMPLETED, {"attempt": 1}, Decision.ACCEPT),
    (T.RUNNING, T.FAILED, {"attempt": 1}, Decision.ACCEPT),
    (T.RUNNING, T.CRASHED, {"attempt": 1}, Decision.ACCEPT),
    (T.RUNNING, T.PAUSED, {"attempt": 1}, Decision.ACCEPT),
    (T.PAUSED, T.RUNNING, {"attempt": 1}, Decision.ACCEPT),
    (T.SCHEDULED, T.CANCELLED, {}, Decision.ACCEPT),
    # a claimed run answers to its claim: a report without the attempt is refused,
    # except on the cancel path, open to anyone who may cancel
    (T.PENDING, T.RUNNING, {}, Decision.ABORT),
    (T.RUNNING, T.COMPLETED, {}, Decision.ABORT),
    (T.RUNNING, T.CRASHED, {}, Decision.ABORT),
    (T.PAUSED, T.RUNNING, {}, Decision.ABORT),
    (T.PENDING, T.CANCELLED, {}, Decision.ACCEPT),
    (T.RUNNING, T.CANCELLING, {}, Decision.ACCEPT),
    # terminal states are final ...
    (T.COMPLETED, T.RUNNING, {}, Decision.ABORT),
    (T.FAILED, T.PENDING, {}, Decision.ABORT),
    (T.CRASHED, T.COMPLETED, {}, Decision.ABORT),
    (T.CANCELLED, T.RUNNING, {}, Decision.ABORT),
    (T.COMPLETED, T.SCHEDULED, {}, Decision.ABORT),
    # ... unless a retry is requested, and only back to SCHEDULED
    (T.FAILED, T.SCHEDULED, {"retry": True}, Decision.ACCEPT),
    (T.CRASHED, T.SCHEDULED, {"retry": True}, Decision.ACCEPT),
    (T.COMPLETED, T.SCHEDULED, {"retry": True}, Decision.ACCEPT),
    (T.FAILED, T.RUNNING, {"retry": True}, Decision.ABORT),
    (T.RUNNING, T.SCHEDULED, {"retry": True}, Decision.REJECT),
    # Cancelling leads only to Cancelled
    (T.CANCELLING, T.CANCELLED, {}, Decision.ACCEPT),
    (T.CANCELLING, T.COMPLETED, {}, Decision.REJECT),
    (T.CANCELLING, T.RUNNING, {}, Decision.REJECT),
    (T.CANCELLING, T.FAILED, {}, Decision.REJECT),
    # a stale owner is refused
    (T.RUNNING, T.COMPLETED, {"attempt": 0}, Decision.ABORT),
    (T.RUNNING, T.COMPLETED, {"attempt": 1}, Decision.ACCEPT),
    (T.SCHEDULED, T.PENDING, {"attempt": 1}, Decision.ACCEPT),
    (T.SCHEDULED, T.PENDING, {"attempt": 0}, Decision.ABORT),
]


@pytest.mark.parametrize(("current", "proposed", "extra", "expected"), TABLE)
def test_rule_table(
    current: StateType, proposed: StateType, extra: dict[str, object], expected: Decision
) -> None:
    outcome = decide(run_in(current), proposed, **extra)
    assert outcome.status is expected, outcome.reason
    if expected is not Decision.ACCEPT:
        assert outcome.reason  # every refusal says why


@pytest.mark.parametrize("proposed", [T.PENDING, T.RUNNING])
def test_too_early_waits_with_the_delay(proposed: StateType) -> None:
    early = run_in(T.SCHEDULED, scheduled=NOW + timedelta(seconds=90))
    outcome = decide(early, proposed)
    assert outcome.status is Decision.WAIT
    assert outcome.delay_seconds == pytest.approx(90)


def test_repeated_transition_id_is_accepted_without_a_change() -> None:
    run = run_in(T.RUNNING, recent=("t-1",))
    outcome = decide(run, T.COMPLETED, transition_id="t-1")
    assert outcome.status is Decision.ACCEPT
    assert outcome.replay
    # even a proposal that would now be refused: the caller's earlier success stands
    done = run_in(T.COMPLETED, recent=("t-1",))
    assert decide(done, T.COMPLETED, transition_id="t-1").replay


def test_apply_claims_counts_and_stamps() -> None:
    run = run_in(T.SCHEDULED, attempt=0)
    proposal = ProposeState(
        id=run.id, state=ProposedState(type=T.PENDING), runner="r1", transition_id="x"
    )
    ctx = rules.Context(run=run, proposal=proposal, now=NOW)
    state = rules.build_state(ctx)
    claimed = rules.apply(ctx, state)
    assert claimed.attempt == 1
    assert claimed.runner == "r1"
    assert claimed.state.name == "Pending"
    assert claimed.state.details.runner == "r1"
    assert claimed.recent_transitions == ["x"]

    later = NOW + timedelta(seconds=5)
    running_ctx = rules.Context(
        run=claimed,
        proposal=ProposeState(id=run.id, state=ProposedState(type=T.RUNNING)),
        now=later,
    )
    running = rules.apply(running_ctx, rules.build_state(running_ctx))
    assert running.run_count == 1
    assert running.start_time == later

    done_ctx = rules.Context(
        run=running,
        proposal=ProposeState(id=run.id, state=ProposedState(type=T.COMPLETED, data={"v": 1})),
        now=later,
    )
    done = rules.apply(done_ctx, rules.build_state(done_ctx))
    assert done.end_time == later
    assert done.state.data == {"v": 1}


def test_retry_reopens_and_clears_the_owner() -> None:
    failed = run_in(T.FAILED)
    later = NOW + timedelta(minutes=1)
    ctx = rules.Context(
        run=failed,
        proposal=ProposeState(
            id=failed.id,
            state=ProposedState(
                type=T.SCHEDULED,
                name="AwaitingRetry",
                details=StateDetails(scheduled_time=later),
            ),
            retry=True,
        ),
        now=NOW,
    )
    reopened = rules.apply(ctx, rules.build_state(ctx))
    assert reopened.state.name == "AwaitingRetry"
    assert reopened.expected_start_time == later
    assert reopened.runner is None
    assert reopened.end_time is None


def test_recent_transitions_are_bounded() -> None:
    run = run_in(T.RUNNING, recent=tuple(f"t{i}" for i in range(rules.RECENT_TRANSITIONS)))
    ctx = rules.Context(
        run=run,
        proposal=ProposeState(id=run.id, state=ProposedState(type=T.RUNNING), transition_id="new"),
        now=NOW,
    )
    after = rules.apply(ctx, rules.build_state(ctx))
    assert len(after.recent_transitions) == rules.RECENT_TRANSITIONS
    assert after.recent_transitions[-1] == "new"


def test_an_owner_waiting_to_retry_keeps_its_claim() -> None:
    running = claimed(run_in(T.RUNNING))
    ctx = rules.Context(
        run=running,
        proposal=ProposeState(
            id=running.id,
            state=ProposedState(type=T.SCHEDULED, name="AwaitingRetry"),
            attempt=running.attempt,
        ),
        now=NOW,
    )
    assert rules.decide(ctx).status is Decision.ACCEPT
    assert rules.apply(ctx, rules.build_state(ctx)).runner == "r1"


def claimed(run: FlowRun, runner: str = "r1") -> FlowRun:
    return msgspec.structs.replace(run, runner=runner, attempt=max(run.attempt, 1))


def release(run: FlowRun, expected: T | None = None) -> rules.Context:
    return rules.Context(
        run=run,
        proposal=ProposeState(
            id=run.id,
            state=ProposedState(type=T.SCHEDULED),
            attempt=run.attempt,
            release=True,
            expected=expected,
        ),
        now=NOW,
    )


def test_only_a_pending_claim_can_be_released() -> None:
    pending = claimed(run_in(T.PENDING))
    ctx = release(pending)
    assert rules.decide(ctx).status is Decision.ACCEPT
    assert rules.apply(ctx, rules.build_state(ctx)).runner is None
    for state in (T.RUNNING, T.PAUSED, T.CANCELLING):
        outcome = rules.decide(release(claimed(run_in(state))))
        assert outcome.status is Decision.REJECT, state
        assert "only a Pending claim can be released" in (outcome.reason or "")


def test_a_proposal_naming_the_state_it_read_is_refused_once_the_run_moved_on() -> None:
    """The watcher read Pending and decided to release; the run is Running by now."""
    running = claimed(run_in(T.RUNNING))
    outcome = rules.decide(release(running, expected=T.PENDING))
    assert outcome.status is Decision.REJECT
    assert "not PENDING as the proposal expects" in (outcome.reason or "")
    crash = rules.Context(
        run=running,
        proposal=ProposeState(
            id=running.id,
            state=ProposedState(type=T.CRASHED),
            attempt=running.attempt,
            expected=T.RUNNING,
        ),
        now=NOW,
    )
    assert rules.decide(crash).status is Decision.ACCEPT


def test_the_released_holder_cannot_start_the_run() -> None:
    """A release spends the attempt: the old holder's reports are stale."""
    ctx = release(claimed(run_in(T.PENDING)))
    released = rules.apply(ctx, rules.build_state(ctx))
    assert released.attempt == ctx.run.attempt + 1
    for late in (T.RUNNING, T.CRASHED, T.COMPLETED):
        outcome = rules.decide(
            rules.Context(
                run=released,
                proposal=ProposeState(
                    id=released.id, state=ProposedState(type=late), attempt=ctx.run.attempt
                ),
                now=NOW,
            )
        )
        assert outcome.status is Decision.ABORT, late
        assert "is stale" in (outcome.reason or "")
    claim = rules.Context(
        run=released,
        proposal=ProposeState(
            id=released.id,
            state=ProposedState(type=T.PENDING),
            attempt=released.attempt,
            runner="r2",
        ),
        now=NOW,
    )
    assert rules.decide(claim).status is Decision.ACCEPT


def test_a_claim_sent_again_is_told_apart_while_its_run_is_pending_under_it() -> None:
    """The chaos test's third body: a claim re-sent after its reply was lost was
    answered "already applied" with no slot lease, though the slot its first
    copy took had lapsed (nobody renewed it) and gone to another run."""
    claim = ProposeState(
        id=RUN_ID, state=ProposedState(type=T.PENDING), runner="r1", attempt=0, transition_id="c"
    )
    scheduled = run_in(T.SCHEDULED, attempt=0)
    first = rules.Context(run=scheduled, proposal=claim, now=NOW)
    assert not rules.claim_sent_again(first)  # a first claim takes its slot as it is applied
    pending = rules.apply(first, rules.build_state(first))
    again = rules.Context(run=pending, proposal=claim, now=NOW)
    assert rules.decide(again).replay
    assert rules.claim_sent_again(again)
    # Once the claim has moved on, a late copy answers a claimant that is not listening.
    running = msgspec.structs.replace(pending, state=run_in(T.RUNNING).state)
    assert not rules.claim_sent_again(rules.Context(run=running, proposal=claim, now=NOW))
    other = msgspec.structs.replace(claim, transition_id="d")
    assert not rules.claim_sent_again(rules.Context(run=pending, proposal=other, now=NOW))
