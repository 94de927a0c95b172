"""Real flow files for runner tests: write one, register a deployment per flow in it,
run one to its end."""

from __future__ import annotations

from pathlib import Path

from engine.client import Client
from shared.messages import RegisterDeployment
from shared.models import FlowRun
from shared.states import StateType


async def deploy_flows(
    client: Client,
    folder: Path,
    source: str,
    flows: dict[str, str],
    *,
    file: str = "flows.py",
    queue: str = "default",
) -> None:
    """Write ``source`` to ``folder/file`` and register ``<flow>/d`` for each
    ``{flow name: function}`` in ``flows``, dispatched on ``queue``."""
    (folder / file).write_text(source)
    for flow, function in flows.items():
        await client.register_deployment(
            RegisterDeployment(
                name="d",
                flow_name=flow,
                entrypoint=f"{file}:{function}",
                path=str(folder),
                queue=queue,
            )
        )


async def completed_run(client: Client, deployment: str) -> FlowRun:
    """A new run of ``deployment``, once it has ended; it must have Completed."""
    done = await client.wait_for_flow_run((await client.create_flow_run(deployment)).id)
    assert done.state.type is StateType.COMPLETED, done.state.message
    return done
