"""What the cancellation-watcher decides about a run, as pure functions of what it read."""

from __future__ import annotations

from datetime import timedelta

from shared.messages import ProposedState, RunnerStatus
from shared.models import FlowRun
from shared.states import StateType


def orphaned(run: FlowRun, status: RunnerStatus, grace: timedelta) -> bool:
    """Pending by a live runner whose heartbeats, long after the claim, do not name it."""
    return (
        run.state.type is StateType.PENDING
        and status.at - run.state.timestamp > grace
        and all((held.id, held.attempt) != (run.id, run.attempt) for held in status.runs)
    )


def settled(current: StateType, gone: str) -> ProposedState | None:
    """What a run of a runner whose lease lapsed becomes, by its state now.

    The lease lapsed on the server, so its processes passed their fencing
    deadline before that: none of them runs a body any more.
    """
    if current is StateType.PENDING:
        return ProposedState(
            type=StateType.SCHEDULED,
            message=f"{gone} before starting the run; offered to another runner",
        )
    if current is StateType.CANCELLING:
        return ProposedState(
            type=StateType.CANCELLED,
            message=f"Cancelled: {gone}; its lease lapsed, so the run's process had "
            "stopped itself by then.",
        )
    if current in (StateType.RUNNING, StateType.PAUSED):
        return ProposedState(
            type=StateType.CRASHED,
            message=f"Crashed: {gone}; its lease was lost, so the run's process "
            "stopped itself before the lease could lapse.",
        )
    return None
