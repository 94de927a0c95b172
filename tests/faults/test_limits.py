"""The deployment concurrency limit holds however a run enters a claimed state."""

from __future__ import annotations

import pytest

from engine.client import Client
from services.orchestrator._slots import Slots
from shared.messages import Decision, ProposedState, RegisterDeployment, SlotLease
from shared.states import StateType

pytestmark = pytest.mark.anyio


async def test_scheduled_straight_to_running_waits_for_a_slot(client: Client, unique: str) -> None:
    """Found by the fuzzer: Scheduled -> Running skipped the slot, so 4 ran under a limit of 2."""
    flow = f"lim{unique}"
    await client.register_deployment(
        RegisterDeployment(name="d", flow_name=flow, concurrency_limit=1)
    )
    first, second = [await client.create_flow_run(f"{flow}/d", agentless=True) for _ in range(2)]
    claim = await client.propose_state(first.id, ProposedState(type=StateType.PENDING), runner="r")
    assert claim.status is Decision.ACCEPT
    direct = await client.propose_state(second.id, ProposedState(type=StateType.RUNNING))
    assert direct.status is Decision.WAIT, direct
    assert "concurrency slot" in (direct.reason or "")
    done = await client.propose_state(
        first.id, ProposedState(type=StateType.COMPLETED), attempt=claim.attempt
    )
    assert done.status is Decision.ACCEPT
    now = await client.propose_state(second.id, ProposedState(type=StateType.RUNNING))
    assert now.status is Decision.ACCEPT


async def test_a_claim_sent_again_holds_a_slot_lease_or_waits(client: Client, unique: str) -> None:
    """Found by the chaos test (seed 3632226757, 3 bodies under a limit of 2).

    A claim was applied, its reply lost in a stall; the runner sent it again
    and was told "already applied" without a slot lease. The slot its first
    copy took had lapsed meanwhile (the runner did not know it held the run,
    so its heartbeats did not renew it) and gone to another run: the runner
    started a body that no slot covered, fenced only by its own lease.
    """
    flow = f"again{unique}"
    dep = await client.register_deployment(
        RegisterDeployment(name="d", flow_name=flow, concurrency_limit=1)
    )
    first, second = [await client.create_flow_run(f"{flow}/d") for _ in range(2)]
    claim = {"runner": "r1", "attempt": 0, "transition_id": f"claim:r1:{first.id}:0"}
    taken = await client.propose_state(first.id, ProposedState(type=StateType.PENDING), **claim)
    assert taken.status is Decision.ACCEPT and taken.lease_seconds
    # Nobody renews it (the reply was lost): the first claim's slot lease lapses.
    slots = Slots(client.nc.jetstream())
    await slots.release(dep.id, 1, first.id)
    other = await client.propose_state(
        second.id, ProposedState(type=StateType.PENDING), runner="r2", attempt=0
    )
    assert other.status is Decision.ACCEPT
    again = await client.propose_state(first.id, ProposedState(type=StateType.PENDING), **claim)
    assert again.status is Decision.WAIT, again  # not ACCEPT: the slot is another run's
    assert [s.flow_run_id for s in await slots.holders(dep.id, 1)] == [second.id]

    await client.cancel_flow_run(second.id)  # Pending -> Cancelled gives the slot back
    again = await client.propose_state(first.id, ProposedState(type=StateType.PENDING), **claim)
    assert again.status is Decision.ACCEPT and again.lease_seconds, again
    assert [s.flow_run_id for s in await slots.holders(dep.id, 1)] == [first.id]


async def test_a_release_frees_a_slot_renewed_between_its_read_and_its_delete(
    client: Client, unique: str
) -> None:
    """The run's heartbeat renews its slot just as the run ends: the release's
    delete, made at the sequence it read, lost to the renewal, and the slot
    stayed held for an ended run until its lease ran out."""
    flow = f"rel{unique}"
    dep = await client.register_deployment(
        RegisterDeployment(name="d", flow_name=flow, concurrency_limit=1)
    )
    run = await client.create_flow_run(f"{flow}/d")
    claim = await client.propose_state(run.id, ProposedState(type=StateType.PENDING), runner="r")
    assert claim.status is Decision.ACCEPT
    slots = Slots(client.nc.jetstream())
    lease = SlotLease(deployment_id=dep.id, flow_run_id=run.id, runner="r", attempt=claim.attempt)
    read = slots._read
    renewed = False

    async def read_then_renew(deployment_id: str, n: int) -> tuple[SlotLease | None, int]:
        nonlocal renewed
        found = await read(deployment_id, n)
        if not renewed:  # the heartbeat's write lands between this read and the delete
            renewed = True
            hold = await slots.acquire(lease, 1, 30.0)
            assert hold is not None and not hold.fresh
        return found

    slots._read = read_then_renew  # type: ignore[method-assign]
    await slots.release(dep.id, 1, run.id)
    assert renewed
    assert await Slots(client.nc.jetstream()).holders(dep.id, 1) == []
