"""What happens to a slot when it comes due: pure decisions, no I/O.

A due slot of a schedule is judged against its catch-up window and its
overlap policy, given what the same deployment's earlier schedule runs are
doing. The scheduler applies the verdict (dispatch, hold, skip; cancel the
others first for ``cancel_other``) and records why.

* ``allow_all``    — start it, whatever else is running.
* ``skip``         — an earlier run is still going: skip this slot.
* ``buffer_one``   — an earlier run is going: hold this one and start it when
  the earlier ones end; if one is already held, skip this slot.
* ``cancel_other`` — cancel the earlier runs (and supersede a held one), hold
  this one, and start it once they have ended.

The catch-up window applies only to slots the scheduler meets late (it was
not running at their time): a slot older than the window is skipped. A held
slot is released whatever its age: it was on time, and waited by policy.
"""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec

__all__ = ["Action", "Verdict", "judge"]


class Action(enum.Enum):
    DISPATCH = "dispatch"
    HOLD = "hold"
    SKIP = "skip"


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    action: Action
    reason: str = ""
    cancel_running: bool = False
    """cancel_other: cancel the deployment's running schedule runs first."""
    supersede_held: bool = False
    """The held slot gives way to this one (skipped)."""


def judge(
    *,
    slot: datetime,
    now: datetime,
    window: float,
    overlap: str,
    running: int,
    held: bool,
) -> Verdict:
    """Decide what to do with a slot that is due now.

    ``running``: how many earlier schedule runs of the deployment are still
    going (dispatched and not finished); ``held``: whether one is held.
    """
    late = (now - slot).total_seconds()
    if late > window:
        return Verdict(
            action=Action.SKIP,
            reason=f"missed its catch-up window ({late:.0f}s late; window {window:g}s)",
        )
    if overlap == "allow_all" or (running == 0 and not held):
        return Verdict(action=Action.DISPATCH)
    if overlap == "skip":
        return Verdict(
            action=Action.SKIP,
            reason=f"overlap policy skip: {running} earlier run(s) still going",
        )
    if overlap == "buffer_one":
        if held:
            return Verdict(
                action=Action.SKIP,
                reason="overlap policy buffer_one: a run is already waiting",
            )
        return Verdict(action=Action.HOLD, reason="overlap policy buffer_one")
    # cancel_other
    return Verdict(
        action=Action.HOLD,
        reason="overlap policy cancel_other",
        cancel_running=running > 0,
        supersede_held=held,
    )
