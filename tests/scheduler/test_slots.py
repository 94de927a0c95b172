"""Slot arithmetic: pure, deterministic, correct across daylight-saving changes."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler._slots import (
    iter_slots,
    next_slots,
    parse_key,
    schedule_hash,
    slot_key,
    slots_between,
)
from shared.models import (
    CronSchedule,
    DeploymentSchedule,
    IntervalSchedule,
    RRuleSchedule,
    Schedule,
)

NY = "America/New_York"
BERLIN = "Europe/Berlin"


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(slots: list[datetime], zone: str) -> list[str]:
    return [s.astimezone(ZoneInfo(zone)).strftime("%m-%d %H:%M %Z") for s in slots]


def day(schedule: Schedule, zone: str, y: int, m: int, d: int) -> list[datetime]:
    """The slots on one local calendar day."""
    tz = ZoneInfo(zone)
    start = datetime(y, m, d, tzinfo=tz).astimezone(UTC) - timedelta(microseconds=1)
    end = (datetime(y, m, d, tzinfo=tz) + timedelta(days=1, hours=3)).astimezone(UTC)
    return [s for s in slots_between(schedule, start, end) if s.astimezone(tz).day == d]


# --- daylight saving: a 02:30 daily job runs once on both change days ----------------------
@pytest.mark.parametrize(
    ("zone", "spring", "fall", "spring_at", "fall_at"),
    [
        # New York: 02:00 EST -> 03:00 EDT on 2030-03-10; 02:00 EDT -> 01:00 EST on 2030-11-03.
        (NY, (2030, 3, 10), (2030, 11, 3), "03-10 03:30 EDT", "11-03 02:30 EST"),
        # Berlin: 02:00 CET -> 03:00 CEST on 2030-03-31; 03:00 CEST -> 02:00 CET on 2030-10-27.
        (BERLIN, (2030, 3, 31), (2030, 10, 27), "03-31 03:30 CEST", "10-27 02:30 CEST"),
    ],
)
def test_a_0230_daily_cron_runs_once_on_both_change_days(
    zone: str,
    spring: tuple[int, int, int],
    fall: tuple[int, int, int],
    spring_at: str,
    fall_at: str,
) -> None:
    cron = CronSchedule(cron="30 2 * * *", timezone=zone)
    assert local(day(cron, zone, *spring), zone) == [spring_at]
    assert local(day(cron, zone, *fall), zone) == [fall_at]
    rrule = RRuleSchedule(rrule="FREQ=DAILY;BYHOUR=2;BYMINUTE=30", timezone=zone)
    assert day(rrule, zone, *spring) == day(cron, zone, *spring)
    assert day(rrule, zone, *fall) == day(cron, zone, *fall)


def test_a_time_in_the_repeated_hour_runs_once_at_its_first_occurrence() -> None:
    cron = CronSchedule(cron="30 1 * * *", timezone=NY)
    assert local(day(cron, NY, 2030, 11, 3), NY) == ["11-03 01:30 EDT"]


@pytest.mark.parametrize(("zone", "spring", "fall"), [(NY, 10, 3), (BERLIN, 31, 27)])
def test_an_hourly_cron_stays_hourly_in_real_time(zone: str, spring: int, fall: int) -> None:
    hourly = CronSchedule(cron="15 * * * *", timezone=zone)
    short = day(hourly, zone, 2030, 3, spring)
    long = day(hourly, zone, 2030, 11 if zone == NY else 10, fall)
    assert (len(short), len(long)) == (23, 25)
    for slots in (short, long):
        assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(slots))


def test_every_five_minutes_across_the_gap_keeps_a_five_minute_beat() -> None:
    slots = slots_between(
        CronSchedule(cron="*/5 * * * *", timezone=NY), at(2030, 3, 10, 5), at(2030, 3, 10, 9)
    )
    assert len(slots) == 48
    assert {b - a for a, b in itertools.pairwise(slots)} == {timedelta(minutes=5)}


def test_a_daily_interval_keeps_its_local_time_across_a_change() -> None:
    anchor = datetime(2030, 1, 1, 9, tzinfo=ZoneInfo(NY))
    daily = IntervalSchedule(interval=86400, anchor_date=anchor, timezone=NY)
    slots = next_slots(daily, at(2030, 3, 8), 4)
    assert local(slots, NY) == [
        "03-08 09:00 EST",
        "03-09 09:00 EST",
        "03-10 09:00 EDT",
        "03-11 09:00 EDT",
    ]


def test_a_sub_daily_interval_is_elapsed_time_from_its_anchor() -> None:
    every = IntervalSchedule(interval=90, anchor_date=at(2030, 1, 1), timezone=BERLIN)
    assert next_slots(every, at(2030, 1, 1, 0, 2), 3) == [
        at(2030, 1, 1, 0, 3),
        at(2030, 1, 1, 0, 4, 30),
        at(2030, 1, 1, 0, 6),
    ]
    across = slots_between(every, at(2030, 3, 31, 0, 30), at(2030, 3, 31, 1, 30))
    assert len(across) == 40  # the clock change does not touch elapsed time


def test_a_default_anchor_makes_intervals_deterministic() -> None:
    every = IntervalSchedule(interval=3600)
    assert next_slots(every, at(2030, 5, 5, 5, 5), 1) == [at(2030, 5, 5, 6)]


def test_rrule_without_dtstart_is_deterministic_and_fast() -> None:
    rule = RRuleSchedule(rrule="FREQ=MINUTELY;INTERVAL=7", timezone=BERLIN)
    t0 = time.perf_counter()
    first = next_slots(rule, at(2030, 6, 1), 5)
    assert time.perf_counter() - t0 < 2.0  # not one step per occurrence since 2020
    assert first == next_slots(rule, at(2030, 6, 1), 5)
    assert {b - a for a, b in itertools.pairwise(first)} == {timedelta(minutes=7)}
    walls = [s.astimezone(ZoneInfo(BERLIN)).replace(tzinfo=None) for s in first]
    assert all((w - datetime(2020, 1, 1)) % timedelta(minutes=7) == timedelta(0) for w in walls)


def test_a_beat_that_does_not_divide_the_hour_skips_the_gap_and_repeats_the_fold() -> None:
    rule = RRuleSchedule(rrule="FREQ=MINUTELY;INTERVAL=7", timezone=NY)
    spring = slots_between(rule, at(2030, 3, 10, 6), at(2030, 3, 10, 8))
    steps = {b - a for a, b in itertools.pairwise(spring)}
    assert min(steps) == timedelta(minutes=7)  # never denser than its beat
    fall = slots_between(rule, at(2030, 11, 3, 4), at(2030, 11, 3, 7))
    repeated = [s.astimezone(ZoneInfo(NY)) for s in fall if s.astimezone(ZoneInfo(NY)).hour == 1]
    edt = [t.minute for t in repeated if t.tzname() == "EDT"]
    est = [t.minute for t in repeated if t.tzname() == "EST"]
    assert edt and edt == est  # 01:xx fires in both passes


def test_finite_and_impossible_schedules_end() -> None:
    counted = RRuleSchedule(rrule="DTSTART:20300101T090000\nRRULE:FREQ=DAILY;COUNT=3")
    assert len(list(iter_slots(counted, at(2029, 1, 1)))) == 3
    assert next_slots(CronSchedule(cron="0 0 30 2 *"), at(2030, 1, 1), 3) == []


def test_slots_are_strictly_after_and_at_most_the_end() -> None:
    hourly = CronSchedule(cron="0 * * * *")
    assert slots_between(hourly, at(2030, 1, 1, 1), at(2030, 1, 1, 3)) == [
        at(2030, 1, 1, 2),
        at(2030, 1, 1, 3),
    ]


# --- every scheduler agrees, wherever it starts --------------------------------------------
SCHEDULES = st.sampled_from(
    [
        CronSchedule(cron="*/7 * * * *", timezone=NY),
        CronSchedule(cron="30 2 * * *", timezone=BERLIN),
        CronSchedule(cron="15 * * * *", timezone=BERLIN),
        CronSchedule(cron="0 1,2,3 * * 0", timezone=NY),
        RRuleSchedule(rrule="FREQ=HOURLY;INTERVAL=2", timezone=NY),
        RRuleSchedule(rrule="FREQ=WEEKLY;BYDAY=SU;BYHOUR=1,2;BYMINUTE=30", timezone=BERLIN),
        IntervalSchedule(interval=86400, timezone=BERLIN),
        IntervalSchedule(interval=5400.5),
    ]
)
INSTANTS = st.datetimes(
    min_value=datetime(2030, 3, 1), max_value=datetime(2030, 11, 30), timezones=st.just(UTC)
)


@settings(max_examples=60, deadline=None)
@given(schedule=SCHEDULES, start=INSTANTS, cut=st.integers(min_value=0, max_value=20))
def test_resuming_from_any_slot_gives_the_same_slots(
    schedule: Schedule, start: datetime, cut: int
) -> None:
    """A restarted scheduler continues from its last slot: nothing skipped, nothing twice."""
    whole = next_slots(schedule, start, 40)
    assert whole == sorted(set(whole)) and all(s > start for s in whole)
    if cut < len(whole):
        assert next_slots(schedule, whole[cut], 40 - cut - 1) == whole[cut + 1 :]
    if whole:
        assert slots_between(schedule, start, whole[-1]) == whole


# --- identities ---------------------------------------------------------------------------
def test_slot_keys_round_trip() -> None:
    deployment_id = "0b2d3c4e-1111-2222-3333-444455556666"
    for slot, generation in [
        (at(2030, 1, 1), 0),
        (at(2030, 1, 1, 0, 0, 1) + timedelta(microseconds=5), 3),
    ]:
        key = slot_key(deployment_id, "0123456789abcdef", slot, generation)
        parsed = parse_key(key)
        assert parsed is not None
        assert parsed == (deployment_id, "0123456789abcdef", slot, generation)
    assert parse_key("user-key") is None
    assert parse_key(None) is None


def test_the_schedule_digest_ignores_what_does_not_shape_runs() -> None:
    cron = CronSchedule(cron="0 * * * *")
    base = schedule_hash(DeploymentSchedule(schedule=cron, parameters={"a": 1, "b": 2}))
    same = DeploymentSchedule(
        schedule=cron, parameters={"b": 2, "a": 1}, active=False, overlap="skip"
    )
    assert schedule_hash(same) == base
    other = DeploymentSchedule(schedule=cron, parameters={"a": 2, "b": 2})
    assert schedule_hash(other) != base
    assert schedule_hash(DeploymentSchedule(schedule=CronSchedule(cron="1 * * * *"))) != base
