from __future__ import annotations

import pytest

from engine.client import Client
from shared.messages import RegisterDeployment
from shared.states import StateType

pytestmark = pytest.mark.anyio


async def test_create_and_read(client: Client, unique: str) -> None:
    dep = await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f{unique}"))
    run = await client.create_flow_run(f"f{unique}/d", parameters={"x": 1})
    assert run.deployment_id == dep.id
    assert run.state.type is StateType.SCHEDULED
    again = await client.read_flow_run(run.id)
    assert again == run
