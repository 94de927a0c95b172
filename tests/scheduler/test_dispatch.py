"""Due runs are offered on time, late ones marked Late, overlaps handled by policy."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from shared.messages import ProposedState
from shared.models import DeploymentSchedule, IntervalSchedule
from shared.states import StateType

from .conftest import START, Stack

pytestmark = pytest.mark.anyio


async def test_a_run_created_for_later_is_offered_when_due_and_not_before(stack: Stack) -> None:
    await stack.start_scheduler(dispatch_lead_seconds=0.0)
    await stack.deploy("manual")
    later = START + timedelta(minutes=30)
    run = await stack.client.create_flow_run("flow/manual", scheduled_start_time=later)
    await stack.advance(29 * 60 + 59)
    assert run.id not in {o.flow_run_id for o in await stack.offers()}
    await stack.advance(1)
    offers = [o for o in await stack.offers() if o.flow_run_id == run.id]
    assert len(offers) == 1
    assert offers[0].scheduled_time == later and offers[0].queue == stack.queue


async def test_offers_go_out_the_dispatch_lead_ahead_for_runners_to_start_on_time(
    stack: Stack,
) -> None:
    await stack.start_scheduler(dispatch_lead_seconds=2.0)
    await stack.deploy("lead")
    due = START + timedelta(minutes=1)
    run = await stack.client.create_flow_run("flow/lead", scheduled_start_time=due)
    await stack.advance(57)
    assert run.id not in {o.flow_run_id for o in await stack.offers()}
    await stack.advance(1)
    offer = [o for o in await stack.offers() if o.flow_run_id == run.id]
    assert len(offer) == 1 and offer[0].scheduled_time == due
    early = await stack.client.propose_state(
        run.id, ProposedState(type=StateType.PENDING), runner="r", attempt=0
    )
    assert early.status.value == "WAIT"  # a runner that claims early is told to wait
    await stack.advance(2)
    assert (await stack.claim(run.id, run=False)) == 1


async def test_runs_created_while_no_scheduler_ran_are_offered(stack: Stack) -> None:
    await stack.deploy("offline")
    soon = await stack.client.create_flow_run(
        "flow/offline", scheduled_start_time=START + timedelta(seconds=30)
    )
    later = await stack.client.create_flow_run(
        "flow/offline", scheduled_start_time=START + timedelta(hours=2)
    )
    stack.clock.advance(60)
    await stack.start_scheduler()
    await stack.settle()
    assert soon.id in {o.flow_run_id for o in await stack.offers()}
    await stack.advance(2 * 3600)
    assert later.id in {o.flow_run_id for o in await stack.offers()}


async def test_a_run_not_started_in_time_is_marked_late_and_still_runs(stack: Stack) -> None:
    await stack.start_scheduler()
    await stack.deploy("late")
    due = START + timedelta(minutes=1)
    run = await stack.client.create_flow_run("flow/late", scheduled_start_time=due)
    await stack.advance(60 + 14)
    assert (await stack.client.read_flow_run(run.id)).state.name == "Scheduled"
    await stack.advance(1)
    late = await stack.client.read_flow_run(run.id)
    assert (late.state.type, late.state.name) == (StateType.SCHEDULED, "Late")
    assert late.state.details.scheduled_time == due and late.expected_start_time == due
    attempt = await stack.claim(run.id)  # a runner can still take it
    await stack.finish(run.id, attempt)
    assert (await stack.client.read_flow_run(run.id)).state.type is StateType.COMPLETED


async def test_a_claimed_run_is_not_marked_late(stack: Stack) -> None:
    await stack.start_scheduler()
    await stack.deploy("claimed")
    run = await stack.client.create_flow_run(
        "flow/claimed", scheduled_start_time=START + timedelta(minutes=1)
    )
    await stack.advance(61)
    await stack.claim(run.id, run=False)
    await stack.advance(60)
    assert (await stack.client.read_flow_run(run.id)).state.type is StateType.PENDING


async def test_a_run_cancelled_before_its_time_is_not_offered(stack: Stack) -> None:
    await stack.start_scheduler()
    await stack.deploy("cancelled")
    run = await stack.client.create_flow_run(
        "flow/cancelled", scheduled_start_time=START + timedelta(minutes=1)
    )
    await stack.client.cancel_flow_run(run.id)
    await stack.advance(120)
    assert run.id not in {o.flow_run_id for o in await stack.offers()}


# --- overlap policies ----------------------------------------------------------------
async def _overlapping(stack: Stack, overlap: str) -> tuple[list, int]:
    """Slot 1 starts and keeps running while slots 2 and 3 come due."""
    await stack.start_scheduler()
    item = DeploymentSchedule(schedule=IntervalSchedule(interval=60), overlap=overlap)  # type: ignore[arg-type]
    await stack.deploy(overlap.replace("_", "-"), item)
    await stack.advance(60)
    runs = await stack.runs(f"flow/{overlap.replace('_', '-')}")
    attempt = await stack.claim(runs[0].id)
    await stack.advance(60)
    await stack.advance(60)
    return await stack.runs(f"flow/{overlap.replace('_', '-')}"), attempt


async def test_overlap_allow_all_starts_every_slot(stack: Stack) -> None:
    runs, _ = await _overlapping(stack, "allow_all")
    offered = {o.flow_run_id for o in await stack.offers()}
    assert {runs[1].id, runs[2].id} <= offered


async def test_overlap_skip_skips_slots_while_one_is_running(stack: Stack) -> None:
    runs, attempt = await _overlapping(stack, "skip")
    offered = {o.flow_run_id for o in await stack.offers()}
    for skipped in runs[1:3]:
        assert skipped.id not in offered
        assert skipped.state.type is StateType.CANCELLED
        assert "overlap policy skip" in (skipped.state.message or "")
    await stack.finish(runs[0].id, attempt)
    await stack.advance(60)  # the next slot runs again
    assert (await stack.runs("flow/skip"))[3].id in {o.flow_run_id for o in await stack.offers()}


async def test_overlap_buffer_one_holds_one_and_starts_it_after(stack: Stack) -> None:
    runs, attempt = await _overlapping(stack, "buffer_one")
    offered = {o.flow_run_id for o in await stack.offers()}
    held, skipped = runs[1], runs[2]
    assert held.id not in offered and held.state.type is StateType.SCHEDULED
    assert skipped.state.type is StateType.CANCELLED
    assert "buffer_one" in (skipped.state.message or "")
    await stack.finish(runs[0].id, attempt)
    await stack.settle()
    assert held.id in {o.flow_run_id for o in await stack.offers()}


async def test_overlap_cancel_other_cancels_the_running_one_first(stack: Stack) -> None:
    runs, attempt = await _overlapping(stack, "cancel_other")
    first = await stack.client.read_flow_run(runs[0].id)
    assert first.state.type is StateType.CANCELLING
    offered = {o.flow_run_id for o in await stack.offers()}
    superseded, newest = runs[1], runs[2]
    assert superseded.state.type is StateType.CANCELLED  # gave way to the newer slot
    assert newest.id not in offered  # waits until the cancelled run has ended
    await stack.client.propose_state(
        first.id, ProposedState(type=StateType.CANCELLED), attempt=attempt
    )
    # The scheduler learns of the Cancelled from the event stream, which on a
    # busy host can arrive after one settle: wait for the offer.
    with anyio.fail_after(30):
        while newest.id not in {o.flow_run_id for o in await stack.offers()}:
            await stack.settle()
            await anyio.sleep(0.05)
