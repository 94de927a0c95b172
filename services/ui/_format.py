"""How values look on the pages: times, durations, states, schedules, JSON.

Pure functions, registered as Jinja filters by :mod:`services.ui._templates`.
Times are sent as ``<time>`` elements reading UTC; the page's script shows
them in the browser's zone and keeps UTC in the hover text, so a page
without script still reads right.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup

from shared.models import CronSchedule, DeploymentSchedule, FlowRun, IntervalSchedule
from shared.states import LATE, State

#: The label a run gets when it is due (Late) but a concurrency slot holds it back.
AWAITING_SLOT = "AwaitingConcurrencySlot"

__all__ = [
    "AWAITING_SLOT",
    "ago",
    "clock",
    "describe_schedule",
    "duration",
    "human_seconds",
    "pretty_json",
    "state_class",
    "state_label",
    "when",
    "when_html",
]


def now() -> datetime:
    return datetime.now(UTC)


def when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def when_html(value: datetime | None, precise: bool = False) -> Markup:
    """A ``<time>`` the browser turns into its own zone; ``precise``: to the millisecond."""
    if value is None:
        return Markup("—")
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if precise else when(utc)
    return Markup('<time datetime="{}" title="{} UTC"{}>{} UTC</time>').format(
        utc.isoformat(), text, Markup(' data-precise="1"') if precise else "", text
    )


def clock(value: datetime | None, precise: bool = False) -> Markup:
    """Only the time of day (a run's own events), as a ``<time>``; see :func:`when_html`."""
    if value is None:
        return Markup("—")
    utc = value.astimezone(UTC)
    text = utc.strftime("%H:%M:%S.%f")[:-3] if precise else utc.strftime("%H:%M:%S")
    return Markup('<time datetime="{}" title="{} UTC" data-clock="1"{}>{}</time>').format(
        utc.isoformat(),
        when(utc),
        Markup(' data-precise="1"') if precise else "",
        text,
    )


def human_seconds(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 90:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def ago(value: datetime | None, reference: datetime | None = None) -> str:
    """``12s ago`` or ``in 4m``."""
    if value is None:
        return "—"
    delta = ((reference or now()) - value).total_seconds()
    if -1 < delta < 1:
        return "just now"
    return f"{human_seconds(delta)} ago" if delta > 0 else f"in {human_seconds(delta)}"


def duration(run: FlowRun, attempts: list[float] | None = None) -> str:
    """How long the run ran: the sum of its attempts when they are known, not the idle gaps.

    ``attempts`` are the seconds of each attempt (from its state history); a
    run that ran once needs none: start to end is its one attempt.
    """
    if attempts:
        if len(attempts) == 1:
            return human_seconds(attempts[0])
        return " + ".join(human_seconds(a) for a in attempts)
    if run.start_time is None:
        return "—"
    end = run.end_time or now()
    return human_seconds((end - run.start_time).total_seconds())


def state_class(state: State, label: str | None = None) -> str:
    """A CSS class per state type; some names of their own (Late, AwaitingRetry, ...)."""
    name = (label or state.name).lower()
    if name in (LATE.lower(), "awaitingretry", AWAITING_SLOT.lower(), "retrying", "cached"):
        return f"st-{name}"
    return f"st-{state.type.value.lower()}"


def state_label(state: State) -> str:
    return state.name


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True)


def describe_schedule(item: DeploymentSchedule) -> str:
    schedule = item.schedule
    if isinstance(schedule, CronSchedule):
        text = f"cron {schedule.cron}"
    elif isinstance(schedule, IntervalSchedule):
        text = f"every {human_seconds(schedule.interval)}"
    else:
        text = f"rrule {schedule.rrule}"
    if schedule.timezone != "UTC":
        text += f" ({schedule.timezone})"
    if not item.active:
        text += ", inactive"
    return text
