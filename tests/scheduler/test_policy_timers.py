"""Pure overlap and catch-up decisions; the timer heap on a fake clock."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from services.scheduler._policy import Action, Verdict, judge
from services.scheduler._timers import Timers
from shared.clock import FakeClock

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def verdict(overlap: str, *, running: int = 0, held: bool = False, late: float = 0.0) -> Verdict:
    return judge(
        slot=T0,
        now=T0 + timedelta(seconds=late),
        window=60,
        overlap=overlap,
        running=running,
        held=held,
    )


@pytest.mark.parametrize("overlap", ["allow_all", "skip", "buffer_one", "cancel_other"])
def test_nothing_running_starts_the_slot(overlap: str) -> None:
    assert verdict(overlap).action is Action.DISPATCH


@pytest.mark.parametrize("overlap", ["allow_all", "skip", "buffer_one", "cancel_other"])
def test_a_slot_older_than_the_catch_up_window_is_skipped(overlap: str) -> None:
    skipped = verdict(overlap, late=61)
    assert skipped.action is Action.SKIP and "catch-up window" in skipped.reason
    assert verdict(overlap, late=60).action is Action.DISPATCH


def test_each_overlap_policy_while_one_runs() -> None:
    assert verdict("allow_all", running=2).action is Action.DISPATCH
    assert verdict("skip", running=1).action is Action.SKIP
    assert verdict("buffer_one", running=1).action is Action.HOLD
    assert verdict("buffer_one", running=1, held=True).action is Action.SKIP
    cancel = verdict("cancel_other", running=1, held=True)
    assert cancel.action is Action.HOLD and cancel.cancel_running and cancel.supersede_held


@pytest.mark.anyio
async def test_timers_fire_in_time_order_and_only_when_due() -> None:
    clock = FakeClock(T0)
    timers = Timers(clock)
    fired: list[Hashable] = []
    moved = anyio.Event()

    async def fire(key: Hashable) -> None:
        fired.append(key)
        moved.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(timers.run, fire)
        timers.set("b", T0 + timedelta(seconds=20))
        timers.set("a", T0 + timedelta(seconds=10))
        timers.set("gone", T0 + timedelta(seconds=5))
        timers.cancel("gone")
        timers.set("c", T0 + timedelta(hours=1))
        timers.set("c", T0 + timedelta(seconds=15))  # moved earlier
        await anyio.wait_all_tasks_blocked()
        assert fired == []
        assert timers.waiting_for == T0 + timedelta(seconds=10)
        clock.advance(30)
        with anyio.fail_after(5):
            while len(fired) < 3:
                await moved.wait()
                moved = anyio.Event()
        assert fired == ["a", "c", "b"]
        timers.set("now", clock.now())  # an earlier timer wakes the sleeper at once
        with anyio.fail_after(5):
            while "now" not in fired:
                await moved.wait()
                moved = anyio.Event()
        assert len(timers) == 0
        tg.cancel_scope.cancel()
