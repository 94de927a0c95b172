"""Task triggers: pure functions from upstream states to "may this task run?".

A trigger takes a mapping of upstream task-run name to that upstream's final
state and returns a bool. Any function of that shape works as a trigger. The
engine evaluates a trigger only when the task has upstream dependencies (a
future among its arguments or in ``wait_for``), and only after every
upstream has finished; a task without upstreams always runs.

What a trigger that is not met does to the task run (see
``engine._core.task_engine``):

=================  ==============================  ===============================
trigger            met when                        not met: the task run ends
=================  ==============================  ===============================
all_successful     every upstream COMPLETED        PENDING ``NotReady`` (upstream
(the default)                                      failure propagates; not an
                                                   error of this task)
all_finished /     always (upstreams are final)    never happens
always_run
any_failed         some upstream FAILED/CRASHED    FAILED ``TriggerFailed``
                   or NotReady
all_failed         every upstream FAILED/CRASHED   FAILED ``TriggerFailed``
                   or NotReady
any_successful     some upstream COMPLETED         FAILED ``TriggerFailed``
custom function    it returns True                 FAILED ``TriggerFailed``
=================  ==============================  ===============================

Both messages name the upstream task runs that caused the outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from shared.states import State, StateType

__all__ = [
    "Trigger",
    "all_failed",
    "all_finished",
    "all_successful",
    "always_run",
    "any_failed",
    "any_successful",
]

#: Upstream task-run name → final state, to a verdict.
Trigger = Callable[[Mapping[str, State]], bool]


def _succeeded(state: State) -> bool:
    return state.type is StateType.COMPLETED


def _failed(state: State) -> bool:
    # NotReady (PENDING) is a failure that propagated: for a trigger it counts as failed.
    return not _succeeded(state)


def all_successful(upstream: Mapping[str, State]) -> bool:
    """Every upstream completed (Cached counts as completed)."""
    return all(_succeeded(s) for s in upstream.values())


def all_finished(upstream: Mapping[str, State]) -> bool:
    """Always true: the engine calls triggers only once all upstreams are final."""
    return True


always_run = all_finished


def any_failed(upstream: Mapping[str, State]) -> bool:
    """At least one upstream did not complete."""
    return any(_failed(s) for s in upstream.values())


def all_failed(upstream: Mapping[str, State]) -> bool:
    """No upstream completed."""
    return all(_failed(s) for s in upstream.values())


def any_successful(upstream: Mapping[str, State]) -> bool:
    """At least one upstream completed."""
    return any(_succeeded(s) for s in upstream.values())
