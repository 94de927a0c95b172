"""The deployment concurrency limit holds however a run enters a claimed state."""

from __future__ import annotations

import pytest

from engine.client import Client
from shared.messages import Decision, ProposedState, RegisterDeployment
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
