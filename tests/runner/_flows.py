"""Real flow files for runner tests: write one, register a deployment per flow in it."""

from __future__ import annotations

from pathlib import Path

from engine.client import Client
from shared.messages import RegisterDeployment


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
