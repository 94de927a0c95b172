"""How values look on the pages: times, durations, states, schedules, JSON.

Pure functions, registered as Jinja filters by :mod:`services.ui._templates`.
Times are shown in UTC, as the CLI shows them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from shared.models import CronSchedule, DeploymentSchedule, FlowRun, IntervalSchedule
from shared.states import State

__all__ = [
    "ago",
    "describe_schedule",
    "duration",
    "human_seconds",
    "pretty_json",
    "state_class",
    "state_label",
    "when",
]


def now() -> datetime:
    return datetime.now(UTC)


def when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


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


def duration(run: FlowRun) -> str:
    if run.start_time is None:
        return "—"
    end = run.end_time or now()
    return human_seconds((end - run.start_time).total_seconds())


def state_class(state: State) -> str:
    """A CSS class per state type; Late gets its own (it is still Scheduled)."""
    if state.name == "Late":
        return "st-late"
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
