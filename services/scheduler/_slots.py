"""When a schedule fires: pure functions from a schedule to UTC instants ("slots").

Owns the time arithmetic of schedules and nothing else: no NATS, no clock.
Every function takes the instants it reasons about as arguments, so two
schedulers (or one restarted) compute exactly the same slots.

Wall-clock rules, in the schedule's time zone (as cron does):

* A wall time that does not exist (the spring-forward gap) fires once, at the
  instant it would have been had the clock not jumped: a 02:30 daily job runs
  at 03:30 on the spring-forward day in New York.
* A wall time that happens twice (the fall-back repeat) fires once, at its
  first occurrence.
* Except for schedules that beat with the clock (a cron whose hour field is
  ``*``, an HOURLY/MINUTELY/SECONDLY rrule without BYHOUR): they fire at both
  occurrences of a repeated time and not at all in the gap, so an hourly job
  stays hourly in real time.
* Interval schedules are elapsed time from the anchor; an interval of whole
  days in a time zone other than UTC steps in local days instead, so a daily
  09:00 interval stays at 09:00 across daylight-saving changes.

Defaults that make results deterministic: an interval without an anchor and
an rrule without DTSTART start at 2020-01-01 00:00 in the schedule's time
zone. DTSTART and UNTIL inside rrule text are read as wall times of the
schedule's time zone.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import msgspec
from croniter import croniter
from dateutil import rrule as du_rrule

from shared.clock import utc
from shared.models import (
    CronSchedule,
    DeploymentSchedule,
    IntervalSchedule,
    RRuleSchedule,
    Schedule,
)

__all__ = [
    "KEY_PREFIX",
    "SlotKey",
    "iter_slots",
    "next_slots",
    "parse_key",
    "schedule_hash",
    "slot_key",
    "slots_between",
]

DEFAULT_ANCHOR = datetime(2020, 1, 1)
DAY = 86400
#: Bounds how far wall time may be from the instant it names, and how long
#: two offsets of one zone may differ around a transition.
NEAR = timedelta(hours=26)
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_SUB_DAILY = {du_rrule.HOURLY, du_rrule.MINUTELY, du_rrule.SECONDLY}
_UNIT = {
    du_rrule.SECONDLY: timedelta(seconds=1),
    du_rrule.MINUTELY: timedelta(minutes=1),
    du_rrule.HOURLY: timedelta(hours=1),
    du_rrule.DAILY: timedelta(days=1),
    du_rrule.WEEKLY: timedelta(days=7),
}


# --- zone arithmetic ------------------------------------------------------------
@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _is_utc(tz: ZoneInfo) -> bool:
    return tz.key in ("UTC", "Etc/UTC", "Etc/UCT", "UCT", "Zulu", "Etc/Zulu", "GMT", "Etc/GMT")


def _instants(wall: datetime, tz: ZoneInfo, clock_driven: bool) -> list[datetime]:
    """The UTC instants a naive wall time names in ``tz`` (PEP 495 folds)."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first > second:  # in the gap: a fixed time shifts forward, a beat skips it
        return [] if clock_driven else [first]
    return [first, second] if clock_driven else [first]  # repeated: both, or the first


def _offset(instant: datetime, tz: ZoneInfo) -> timedelta:
    return instant.astimezone(tz).utcoffset() or timedelta(0)


def _wall_offset(wall: datetime, tz: ZoneInfo) -> timedelta:
    return wall.replace(tzinfo=tz).utcoffset() or timedelta(0)


def _ordered(walls: Iterator[datetime], tz: ZoneInfo, clock_driven: bool) -> Iterator[datetime]:
    """Map ascending wall times to ascending, distinct UTC instants.

    Around a transition the instants of consecutive wall times can come out
    of order (a shifted gap time, a second fold), so they wait in a small
    heap until no later wall time can produce an earlier instant.
    """
    if _is_utc(tz):
        for wall in walls:
            yield wall.replace(tzinfo=UTC)
        return
    heap: list[datetime] = []
    last: datetime | None = None
    for wall in walls:
        for instant in _instants(wall, tz, clock_driven):
            heapq.heappush(heap, instant)
        most = max(_wall_offset(wall, tz), _wall_offset(wall + NEAR, tz))
        bound = wall.replace(tzinfo=UTC) - most
        while heap and heap[0] <= bound:
            instant = heapq.heappop(heap)
            if instant != last:
                last = instant
                yield instant
    while heap:
        instant = heapq.heappop(heap)
        if instant != last:
            last = instant
            yield instant


def _first_wall(after: datetime, tz: ZoneInfo) -> datetime:
    """The earliest wall time whose instant can fall after ``after``."""
    least = min(_offset(after - NEAR, tz), _offset(after, tz), _offset(after + NEAR, tz))
    return (after + least).replace(tzinfo=None)


# --- wall-time generators ------------------------------------------------------------
def _cron_walls(sched: CronSchedule, start: datetime) -> Iterator[datetime]:
    """Wall times at or after ``start`` (naive)."""
    it = croniter(sched.cron, start - timedelta(microseconds=1), day_or=sched.day_or)
    while True:
        try:
            yield it.get_next(datetime)
        except (StopIteration, ValueError, KeyError, OverflowError):  # e.g. "0 0 30 2 *"
            return


def _cron_clock_driven(cron: str) -> bool:
    fields = _ALIASES.get(cron.strip().lower(), cron).split()
    return len(fields) >= 2 and fields[1] == "*"


@lru_cache(maxsize=4096)
def _parse_rrule(text: str) -> Any:
    """The rule with a naive DTSTART (2020-01-01 local unless the text gives one)."""
    return du_rrule.rrulestr(text, dtstart=DEFAULT_ANCHOR, ignoretz=True)


def _rrule_walls(sched: RRuleSchedule, start: datetime) -> tuple[Iterator[datetime], bool]:
    rule = _parse_rrule(sched.rrule)
    if isinstance(rule, du_rrule.rrule):
        freq: int = rule._freq
        both = freq in _SUB_DAILY and "byhour" not in rule._original_rule
        unit = _UNIT.get(freq)
        dtstart: datetime = rule._dtstart
        # Iterating from a DTSTART years ago costs a step per occurrence since
        # then; move DTSTART forward by whole periods (keeps every phase), as
        # long as a COUNT does not need the occurrences in between.
        if unit is not None and rule._count is None and start > dtstart:
            period = unit * rule._interval
            periods = math.floor((start - dtstart) / period) - 1
            if periods > 0:
                rule = rule.replace(dtstart=dtstart + periods * period)
        return rule.xafter(start, inc=True), both
    return rule.xafter(start, inc=True), False  # an rruleset: EXDATE, several rules


def _interval_walls(sched: IntervalSchedule, start: datetime, tz: ZoneInfo) -> Iterator[datetime]:
    """Whole-day intervals in a local zone: anchor's wall time plus k days."""
    anchor = _anchor(sched, tz).astimezone(tz).replace(tzinfo=None)
    step = timedelta(seconds=sched.interval)
    k = max(0, math.floor((start - anchor) / step))
    while True:
        yield anchor + k * step
        k += 1


def _anchor(sched: IntervalSchedule, tz: ZoneInfo) -> datetime:
    if sched.anchor_date is not None:
        return utc(sched.anchor_date)
    return DEFAULT_ANCHOR.replace(tzinfo=tz).astimezone(UTC)


def _interval_instants(sched: IntervalSchedule, after: datetime) -> Iterator[datetime]:
    """Elapsed-time intervals, in whole microseconds so every scheduler agrees."""
    anchor = _anchor(sched, _zone(sched.timezone))
    step = max(1, round(sched.interval * 1_000_000))
    elapsed = (after - anchor) // timedelta(microseconds=1)
    k = max(0, elapsed // step + 1)
    while True:
        yield anchor + timedelta(microseconds=k * step)
        k += 1


# --- public ------------------------------------------------------------------------------
def iter_slots(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """Every slot strictly after ``after``, ascending, as aware UTC datetimes.

    Endless for most schedules; a finite rrule (COUNT, UNTIL) or an
    impossible cron (``0 0 30 2 *``) ends. Raises ValueError only for text
    that registration would have refused (an unknown zone, a broken rule).
    """
    after = utc(after)
    tz = _zone(schedule.timezone)
    instants: Iterator[datetime]
    if isinstance(schedule, IntervalSchedule):
        if schedule.interval % DAY == 0 and not _is_utc(tz):
            walls = _interval_walls(schedule, _first_wall(after, tz), tz)
            instants = _ordered(walls, tz, clock_driven=False)
        else:
            instants = _interval_instants(schedule, after)
    elif isinstance(schedule, CronSchedule):
        walls = _cron_walls(schedule, _first_wall(after, tz))
        instants = _ordered(walls, tz, _cron_clock_driven(schedule.cron))
    else:
        walls, both = _rrule_walls(schedule, _first_wall(after, tz))
        instants = _ordered(walls, tz, both)
    for instant in instants:
        if instant > after:
            yield instant


def slots_between(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """Slots ``t`` with ``start < t <= end``."""
    end = utc(end)
    out: list[datetime] = []
    for slot in iter_slots(schedule, start):
        if slot > end:
            break
        out.append(slot)
    return out


def next_slots(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    """The first ``count`` slots strictly after ``after`` (fewer if the schedule ends)."""
    out: list[datetime] = []
    for slot in iter_slots(schedule, after):
        if len(out) >= count:
            break
        out.append(slot)
    return out


# --- identities -------------------------------------------------------------------------
_sorted = msgspec.json.Encoder(order="sorted")
KEY_PREFIX = "schedule:"
_KEY = re.compile(r"^schedule:([0-9a-fA-F-]{32,36}):([0-9a-f]{16}):([0-9T:.\-]+Z)(?::r(\d+))?$")


def schedule_hash(item: DeploymentSchedule) -> str:
    """What makes a schedule's runs what they are: its timing and its parameters.

    Its ``active`` flag, catch-up window and overlap policy are left out: they
    decide whether and when a run starts, not which runs there are.
    """
    body = _sorted.encode({"schedule": item.schedule, "parameters": item.parameters})
    return hashlib.sha256(body).hexdigest()[:16]


def _slot_text(slot: datetime) -> str:
    slot = utc(slot)
    text = slot.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{slot.microsecond:06d}Z" if slot.microsecond else f"{text}Z"


def slot_key(deployment_id: str, digest: str, slot: datetime, generation: int = 0) -> str:
    """The idempotency key of one slot's run; ``generation`` > 0 after removals."""
    key = f"{KEY_PREFIX}{deployment_id}:{digest}:{_slot_text(slot)}"
    return f"{key}:r{generation}" if generation else key


class SlotKey(NamedTuple):
    deployment_id: str
    digest: str
    slot: datetime
    generation: int


def parse_key(key: str | None) -> SlotKey | None:
    """The slot a run was created for, if the scheduler created it."""
    if not key or not key.startswith(KEY_PREFIX):
        return None
    m = _KEY.match(key)
    if m is None:
        return None
    try:
        slot = datetime.fromisoformat(m.group(3).replace("Z", "+00:00"))
    except ValueError:
        return None
    return SlotKey(m.group(1), m.group(2), slot, int(m.group(4) or 0))
