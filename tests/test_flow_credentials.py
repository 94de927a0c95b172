"""A flow's code cannot act as its runner: it holds no runner credentials, and
the flow credentials it is given (a client-role user of deploy/nats/auth.conf)
are refused the runner's subjects.

A runner with the real auth.conf users runs a flow that looks at its own
environment, then tries, with the NATS settings it has, to propose a state
of its own run and to publish a task-run record — both runner-only — and
to read its run through the client, which the client role may do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from engine.client import Client
from engine.runner import Runner
from engine.runner._fork import ForkServerFlowRunner
from engine.runner._subprocess import SubprocessFlowRunner
from shared.states import StateType

from .local_stack import LocalStack, started
from .runner._flows import deploy_flows
from .runner.test_runner import running

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FLOW = """
import json, os
import anyio
from engine import flow
from engine.client import Client
from shared.connection import connect
from shared.settings import Settings

async def _probe(run_id):
    settings = Settings.from_env()
    found = {"user": settings.nats_user}
    nc = await connect(settings, name="flow-code", wait=5)
    try:
        try:
            await nc.request("flowrun.state.propose", b"{}", timeout=2)
            found["propose"] = "answered"
        except Exception as exc:
            found["propose"] = type(exc).__name__
        await nc.publish(f"taskrun.states.{run_id}", b"{}")
        await nc.flush()
    finally:
        await nc.close()
    async with Client(settings) as client:
        found["read_state"] = (await client.read_flow_run(run_id)).state.type.value
    return found

@flow(name="{name}")
def probe(out: str) -> None:
    run_id = os.environ["SLUICE_FLOW_RUN_ID"]
    found = {"env": {k: v for k, v in os.environ.items() if k.startswith("SLUICE_")}}
    found.update(anyio.run(_probe, run_id))
    with open(out, "w") as f:
        json.dump(found, f)
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started(tmp_path_factory.mktemp("flowcreds"), only=["orchestrator"]) as local:
        yield local


async def _refused(stack: LocalStack, user: str, subject: str) -> None:
    wanted = f'user:{user}" - Publish Violation - Subject "{subject}'
    with anyio.fail_after(30):
        while True:
            if any(wanted in line for line in stack.violations()):
                return
            await anyio.sleep(0.1)


@pytest.mark.parametrize("mode", ["subprocess", "fork"])
async def test_flow_code_holds_flow_credentials_that_cannot_act_as_the_runner(
    stack: LocalStack,
    tmp_path: Path,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    runner_password = stack.password("runner")
    # The environment a runner process has in production (docker-compose.yml).
    monkeypatch.setenv("SLUICE_NATS_URL", stack.url)
    monkeypatch.setenv("SLUICE_NATS_USER", "runner")
    monkeypatch.setenv("SLUICE_NATS_PASSWORD", runner_password)
    monkeypatch.setenv("SLUICE_RUNNER_PASSWORD", runner_password)
    monkeypatch.setenv("SLUICE_FLOW_NATS_USER", "client")
    monkeypatch.setenv("SLUICE_FLOW_NATS_PASSWORD", stack.password("client"))
    out = tmp_path / "found.json"
    async with Client(stack.settings("client")) as client:
        await deploy_flows(client, tmp_path, FLOW.replace("{name}", unique), {unique: "probe"})
        flow_runner = SubprocessFlowRunner(standby=0) if mode == "subprocess" else None
        r = Runner(
            name=f"creds-{unique}",
            settings=stack.settings("runner"),
            flow_runner=flow_runner or ForkServerFlowRunner(spares=1),
        )
        await r.aserve_deployment(f"{unique}/d")
        async with running(r):
            created = await client.create_flow_run(f"{unique}/d", parameters={"out": str(out)})
            with anyio.fail_after(60):
                done = await client.wait_for_flow_run(created.id)
    assert done.state.type is StateType.COMPLETED, done.state.message
    found = json.loads(out.read_text())
    env = found["env"]
    assert runner_password not in env.values()
    assert env["SLUICE_NATS_USER"] == "client"
    assert not any(key.startswith("SLUICE_FLOW_NATS_") for key in env)
    assert found["user"] == "client"
    assert found["propose"] != "answered"
    await _refused(stack, "client", "flowrun.state.propose")
    await _refused(stack, "client", f"taskrun.states.{created.id}")
    # What a client may do, the flow's code may: read its own run (Running then).
    assert found["read_state"] == StateType.RUNNING.value
