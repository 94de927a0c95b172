"""Orchestration rules: may this proposed state follow the current one?

Each rule is a pure function of a frozen :class:`Context` that returns an
:class:`Outcome` to object, or ``None`` to let the next rule speak. The first
objection wins; no objection means ACCEPT. :func:`apply` then computes the
run's new value. Nothing here touches NATS, SQLite or the wall clock: the
service passes ``now`` in and persists what comes out.

Decisions, as the proposer reads them:

* ACCEPT — the run is now in the proposed state.
* REJECT — refused; the run keeps its current state, which the reply carries.
* WAIT   — not yet; propose again after ``delay_seconds``.
* ABORT  — stop working on this run: it is finished, or someone else owns it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec

from shared.messages import Decision, ProposeState
from shared.models import FlowRun, PastState
from shared.states import DEFAULT_NAMES, TERMINAL_TYPES, State, StateType

#: How many accepted transition ids a run remembers for de-duplication.
RECENT_TRANSITIONS = 16

#: How many past states a run keeps (``FlowRun.history``). A run passes through
#: four (Scheduled, Pending, Running, an end) and about three more per retry
#: or pause, so 32 keeps the whole path of a run with up to nine retries; the
#: bound matters because the record is written whole on every transition.
HISTORY = 32

CLAIMED_TYPES = frozenset(
    {StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED}
)


class Context(msgspec.Struct, frozen=True, kw_only=True):
    run: FlowRun
    proposal: ProposeState
    now: datetime
    revision: int = 0
    """The KV revision ``run`` was read at: the write that set its state."""


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    status: Decision
    reason: str | None = None
    delay_seconds: float | None = None
    replay: bool = False
    """ACCEPT of a transition id already applied: nothing to write."""


Rule = Callable[[Context], Outcome | None]


def _current(ctx: Context) -> State:
    return ctx.run.state


def terminal_is_final(ctx: Context) -> Outcome | None:
    current, proposed = _current(ctx), ctx.proposal.state.type
    if current.type not in TERMINAL_TYPES:
        return None
    if ctx.proposal.retry and proposed is StateType.SCHEDULED:
        return None
    return Outcome(
        status=Decision.ABORT,
        reason=f"the run already ended as {current.describe()}; "
        "only an explicit retry (SCHEDULED with retry=true) can reopen it",
    )


def retry_needs_a_finished_run(ctx: Context) -> Outcome | None:
    if ctx.proposal.retry and _current(ctx).type not in TERMINAL_TYPES:
        return Outcome(
            status=Decision.REJECT,
            reason=f"a retry needs a finished run; this one is {_current(ctx).describe()}",
        )
    return None


def stale_claim(ctx: Context) -> Outcome | None:
    """A report from an owner whose claim was superseded is refused."""
    attempt = ctx.proposal.attempt
    if attempt is None or attempt == ctx.run.attempt:
        return None
    return Outcome(
        status=Decision.ABORT,
        reason=f"claim attempt {attempt} is stale; the run is at attempt {ctx.run.attempt}",
    )


def expected_state_holds(ctx: Context) -> Outcome | None:
    """A proposal made on a read of the run in one state is not applied to another.

    A watcher that read a run while it was Pending and decided to release it
    must not release it once it is Running: a body may be executing by then.
    """
    expected = ctx.proposal.expected
    if expected is None or expected is _current(ctx).type:
        return None
    return Outcome(
        status=Decision.REJECT,
        reason=f"the run is {_current(ctx).describe()}, "
        f"not {expected.value} as the proposal expects",
    )


def release_only_from_pending(ctx: Context) -> Outcome | None:
    """Only a claim that has not started its body can be handed to someone else."""
    if not ctx.proposal.release or _current(ctx).type is StateType.PENDING:
        return None
    return Outcome(
        status=Decision.REJECT,
        reason=f"only a Pending claim can be released; the run is {_current(ctx).describe()}",
    )


#: What anyone allowed to cancel may propose for a claimed run without its claim.
_CANCEL_TYPES = frozenset({StateType.CANCELLING, StateType.CANCELLED})


def claimed_runs_answer_to_their_claim(ctx: Context) -> Outcome | None:
    """A claimed run's state is reported by its claim's holder, who names the attempt.

    Only the cancel path (to Cancelling, or Cancelled) may leave it out: a
    report without it from a process that merely can propose — another
    runner, a confused script — would otherwise overwrite the owner's.
    """
    if (
        _current(ctx).type in CLAIMED_TYPES
        and ctx.run.runner is not None  # claimed by someone (not merely started)
        and ctx.proposal.attempt is None
        and ctx.proposal.state.type not in _CANCEL_TYPES
    ):
        return Outcome(
            status=Decision.ABORT,
            reason=f"the run is claimed by {ctx.run.runner} (attempt {ctx.run.attempt}); "
            "a report for it must name its claim attempt",
        )
    return None


def no_double_pending(ctx: Context) -> Outcome | None:
    if ctx.proposal.state.type is StateType.PENDING and _current(ctx).type in CLAIMED_TYPES:
        owner = f" by {ctx.run.runner}" if ctx.run.runner else ""
        return Outcome(
            status=Decision.ABORT,
            reason=f"the run is already claimed{owner} ({_current(ctx).describe()})",
        )
    return None


def cancelling_only_to_cancelled(ctx: Context) -> Outcome | None:
    if _current(ctx).type is not StateType.CANCELLING:
        return None
    if ctx.proposal.state.type in (StateType.CANCELLED, StateType.CANCELLING):
        return None
    return Outcome(
        status=Decision.REJECT,
        reason="the run is being cancelled; only Cancelled may follow Cancelling",
    )


def wait_for_scheduled_time(ctx: Context) -> Outcome | None:
    current = _current(ctx)
    if current.type is not StateType.SCHEDULED:
        return None
    if ctx.proposal.state.type not in (StateType.PENDING, StateType.RUNNING):
        return None
    when = current.details.scheduled_time or ctx.run.expected_start_time
    delay = (when - ctx.now).total_seconds()
    if delay <= 0:
        return None
    return Outcome(
        status=Decision.WAIT,
        reason=f"the run is scheduled for {when.isoformat()}",
        delay_seconds=delay,
    )


#: Order matters: finality and ownership are judged before timing.
RULES: tuple[Rule, ...] = (
    terminal_is_final,
    retry_needs_a_finished_run,
    stale_claim,
    expected_state_holds,
    release_only_from_pending,
    no_double_pending,
    cancelling_only_to_cancelled,
    claimed_runs_answer_to_their_claim,
    wait_for_scheduled_time,
)


def decide(ctx: Context, rules: tuple[Rule, ...] = RULES) -> Outcome:
    """Run the rules in order; the first objection wins."""
    if ctx.proposal.transition_id and ctx.proposal.transition_id in ctx.run.recent_transitions:
        return Outcome(status=Decision.ACCEPT, reason="transition already applied", replay=True)
    for rule in rules:
        outcome = rule(ctx)
        if outcome is not None:
            return outcome
    return Outcome(status=Decision.ACCEPT)


def claim_sent_again(ctx: Context) -> bool:
    """Is the proposal a claim already applied, whose run is still Pending under it?

    Its claimant sends it again because no reply came (a stall, a paused
    orchestrator): it does not know it holds the run, so its heartbeats have
    not renewed the slot lease the first copy took, which may have lapsed and
    gone to another run. Such a reply must carry a slot lease counted from
    now, as a first claim's does (``Runs.propose``), or the claimant waits.
    """
    run, proposal = ctx.run, ctx.proposal
    return (
        proposal.transition_id is not None
        and proposal.state.type is StateType.PENDING
        and run.state.type is StateType.PENDING
        and run.state.details.transition_id == proposal.transition_id
    )


def build_state(ctx: Context) -> State:
    """The state to store for an accepted proposal, stamped with ``now``."""
    p = ctx.proposal.state
    details = p.details
    if p.type is StateType.SCHEDULED and details.scheduled_time is None:
        details = msgspec.structs.replace(details, scheduled_time=ctx.now)
    if ctx.proposal.transition_id and details.transition_id is None:
        details = msgspec.structs.replace(details, transition_id=ctx.proposal.transition_id)
    if p.type is StateType.PENDING and ctx.proposal.runner:
        details = msgspec.structs.replace(details, runner=ctx.proposal.runner)
    return State(
        type=p.type,
        name=p.name or DEFAULT_NAMES[p.type],
        timestamp=ctx.now,
        message=p.message,
        details=details,
        data=p.data,
    )


def apply(ctx: Context, state: State) -> FlowRun:
    """The run after ``state`` was accepted: counters, owner and timestamps."""
    run = ctx.run
    changes: dict[str, object] = {"state": state, "updated": ctx.now}
    if state.type is StateType.PENDING:
        changes["attempt"] = run.attempt + 1
        changes["runner"] = ctx.proposal.runner
    elif state.type is StateType.RUNNING:
        changes["run_count"] = run.run_count + (run.state.type is not StateType.RUNNING)
        if run.start_time is None:
            changes["start_time"] = ctx.now
    elif state.type is StateType.SCHEDULED:
        changes["expected_start_time"] = state.details.scheduled_time or ctx.now
        if ctx.proposal.retry or ctx.proposal.release:
            changes["runner"] = None  # back to the queue
        if ctx.proposal.release:
            # The given-up claim is spent: its holder's reports are now stale,
            # and the new offer is a new dispatch item (its message id names
            # the attempt, so JetStream does not drop it as a duplicate).
            changes["attempt"] = run.attempt + 1
        if ctx.proposal.retry:
            changes["end_time"] = None
            if ctx.proposal.agentless:  # executed by whoever asked; never dispatched
                changes["agentless"] = True
    if state.type in TERMINAL_TYPES:
        changes["end_time"] = ctx.now
    if ctx.proposal.transition_id:
        recent = [*run.recent_transitions, ctx.proposal.transition_id]
        changes["recent_transitions"] = recent[-RECENT_TRANSITIONS:]
    history = [*run.history, PastState(state=_slim(run.state), revision=ctx.revision)]
    changes["history"] = history[-HISTORY:]
    changes["history_dropped"] = run.history_dropped + max(0, len(history) - HISTORY)
    return msgspec.structs.replace(run, **changes)


def _slim(state: State) -> State:
    """A state as the history keeps it: a finished state's result or error
    (``data``) and any traceback stay with the current state only."""
    finished = state.type in TERMINAL_TYPES
    if state.details.traceback is None and (state.data is None or not finished):
        return state  # the common case: nothing to leave out
    details = msgspec.structs.replace(state.details, traceback=None)
    return msgspec.structs.replace(state, data=None if finished else state.data, details=details)


def why_not_deletable(run: FlowRun, *, scheduled_only: bool) -> str | None:
    """None when ``run`` may be deleted, else why not.

    A run that has not started (Scheduled and unclaimed) may go; so may a
    finished one, unless ``scheduled_only`` (the scheduler's removals). A run
    that is claimed or under way must be cancelled first, so no process is
    left executing a run that no longer exists.
    """
    state = run.state
    if state.type is StateType.SCHEDULED and run.runner is None:
        return None
    if state.type in TERMINAL_TYPES and not scheduled_only:
        return None
    if scheduled_only:
        return f"flow run {run.id} is {state.describe()}; only an upcoming run is removed"
    return (
        f"flow run {run.id} is {state.describe()}; only a run that has not started or has "
        "finished can be deleted (cancel it first)"
    )
