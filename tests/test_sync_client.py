"""The blocking facade, used from plain synchronous code against a real orchestrator process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from engine import SyncClient
from shared.errors import DeploymentNotFound, StackUnavailable
from shared.messages import RegisterDeployment
from shared.settings import Settings
from shared.states import StateType

from ._procs import start_service, wait_until_serving


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    proc = start_service("services.orchestrator", settings, tmp_path / "orch.log")
    try:
        anyio.run(wait_until_serving, settings, proc)
        yield settings
    finally:
        proc.terminate()
        proc.wait(10)


def test_sync_client_round_trip(served: Settings, unique: str) -> None:
    with SyncClient(served) as client:
        dep = client.register_deployment(RegisterDeployment(name="d", flow_name=f"s{unique}"))
        assert client.read_deployment(f"s{unique}/d").id == dep.id
        run = client.create_flow_run(f"s{unique}/d", parameters={"n": 1}, idempotency_key="k")
        assert client.create_flow_run(f"s{unique}/d", idempotency_key="k").id == run.id
        assert client.read_flow_run(run.id).parameters == {"n": 1}
        assert [r.id for r in client.list_flow_runs(flow_name=f"s{unique}").flow_runs] == [run.id]
        assert client.cancel_flow_run(run.id).state.type is StateType.CANCELLED
        assert client.wait_for_flow_run(run.id).state.type is StateType.CANCELLED
        with pytest.raises(DeploymentNotFound):
            client.create_flow_run(f"s{unique}/missing")


def test_sync_client_without_a_stack(tmp_path: Path) -> None:
    from services.dev import free_port

    settings = Settings(nats_url=f"nats://127.0.0.1:{free_port()}", home=tmp_path)
    with (
        pytest.raises(StackUnavailable, match="is the stack running"),
        SyncClient(settings, connect_timeout=0.5),
    ):
        pass
