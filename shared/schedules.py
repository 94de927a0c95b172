"""Schedules written as plain dicts, and checking a schedule's text.

The seeds write a schedule as a dict with one kind key: ``{"cron": "0 * * * *"}``,
``{"interval": 3600}``, ``{"rrule": "FREQ=DAILY"}``, each with an optional
``timezone`` (and ``anchor_date`` for an interval, ``day_or`` for cron). On
the wire a schedule carries its kind in ``type`` (see
:mod:`shared.models`). These pure functions turn the first form into the
second — for the client, and for the orchestrator, which accepts the dict
form from any NATS client too — and check cron, rrule and time zone text.
Every error is a ValueError whose message starts with the field's path.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import msgspec
from croniter import croniter
from dateutil import rrule

from .models import CronSchedule, IntervalSchedule, RRuleSchedule, Schedule

__all__ = ["KINDS", "check_schedule", "schedule_from_dict", "with_schedule_types"]

#: The kind keys of the dict form, and the extra keys each allows.
KINDS: dict[str, frozenset[str]] = {
    "interval": frozenset({"interval", "timezone", "anchor_date"}),
    "cron": frozenset({"cron", "timezone", "day_or"}),
    "rrule": frozenset({"rrule", "timezone"}),
}
_TYPES: dict[str, type[Schedule]] = {
    "interval": IntervalSchedule,
    "cron": CronSchedule,
    "rrule": RRuleSchedule,
}


def _kind(value: Mapping[str, Any], where: str) -> str:
    if "type" in value:
        kind = value["type"]
        if kind not in KINDS:
            raise ValueError(f"{where}.type: unknown schedule type {kind!r}; use one of {_names()}")
        return str(kind)
    found = [k for k in KINDS if k in value]
    if len(found) != 1:
        raise ValueError(
            f"{where}: a schedule needs exactly one of {_names()}"
            + (f"; it has {', '.join(found)}" if found else f"; it has {sorted(value) or 'none'}")
        )
    return found[0]


def _names() -> str:
    return ", ".join(repr(k) for k in KINDS)


def schedule_from_dict(value: Mapping[str, Any], where: str = "schedule") -> Schedule:
    """The Schedule a dict describes (with or without ``type``), checked.

    An interval may be a number of seconds or a ``timedelta``. Raises
    ValueError naming the field (``schedule.cron: invalid cron expression …``).
    """
    kind = _kind(value, where)
    unknown = sorted(set(value) - KINDS[kind] - {"type"})
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]}: not a field of a {kind} schedule "
            f"(it takes {', '.join(sorted(KINDS[kind]))})"
        )
    fields = dict(value)
    fields.pop("type", None)
    interval = fields.get("interval")
    if isinstance(interval, timedelta):
        fields["interval"] = interval.total_seconds()
    try:
        schedule = msgspec.convert(fields, _TYPES[kind], strict=False)
    except msgspec.ValidationError as exc:
        # msgspec ends with "- at `$.field`"; lead with the field, from the schedule's place.
        text = str(exc)
        at = re.search(r" - at `\$\.([^`]*)`$", text)
        if at is None:
            raise ValueError(f"{where}: {text}") from None
        raise ValueError(f"{where}.{at[1]}: {text[: at.start()]}") from None
    check_schedule(schedule, where)
    return schedule


def check_schedule(schedule: Schedule, where: str = "schedule") -> None:
    """Refuse invalid cron, rrule or time zone text; ValueError names the field."""
    try:
        zoneinfo.ZoneInfo(schedule.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{where}.timezone: unknown time zone {schedule.timezone!r}") from None
    if isinstance(schedule, CronSchedule) and not croniter.is_valid(schedule.cron):
        raise ValueError(f"{where}.cron: invalid cron expression {schedule.cron!r}")
    if isinstance(schedule, RRuleSchedule):
        try:
            rrule.rrulestr(schedule.rrule)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}.rrule: invalid rrule {schedule.rrule!r}: {exc}") from None
    if isinstance(schedule, IntervalSchedule) and schedule.interval <= 0:
        raise ValueError(f"{where}.interval: must be positive")


def with_schedule_types(request: Any) -> Any:
    """A decoded ``deployment.register`` body with ``type`` filled in where a
    schedule uses the dict form; anything else is returned as it is."""
    if not isinstance(request, dict) or not isinstance(request.get("schedules"), list):
        return request
    items = []
    for item in request["schedules"]:
        if isinstance(item, dict) and "schedule" not in item and any(k in item for k in KINDS):
            item = {"schedule": item}  # a bare schedule where a DeploymentSchedule goes
        if isinstance(item, dict) and isinstance(item.get("schedule"), dict):
            schedule = item["schedule"]
            if "type" not in schedule:
                kinds = [k for k in KINDS if k in schedule]
                if len(kinds) == 1:
                    item = {**item, "schedule": {**schedule, "type": kinds[0]}}
        items.append(item)
    return {**request, "schedules": items}
