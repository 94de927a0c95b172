"""A runner process serving one Docker deployment, for the SIGKILL test.

    python -m tests.docker._runner_proc NAME FLOW_DIR IMAGE

Connects with the ``SLUICE_*`` environment, registers ``<flow>/docker`` for the
``sleepy`` flow in FLOW_DIR/flows.py on a ``DockerFlowRunner`` (host network,
so the container reaches a nats-server on this machine's loopback), and
serves it until killed.
"""

from __future__ import annotations

import sys

import anyio

from engine.deployments import RunnerDeployment
from engine.docker_runner import DockerFlowRunner
from engine.runner import Runner


async def main(name: str, folder: str, image: str) -> None:
    flow_runner = DockerFlowRunner(image=image, networks=["host"], stream_output=False)
    runner = Runner(name=name, query_seconds=1.0, kill_grace=2.0, heartbeat_seconds=1.0)
    await runner.aadd_deployment(
        RunnerDeployment(
            name="docker",
            flow_name=f"{name}-sleepy",
            entrypoint="flows.py:sleepy",
            path=folder,
            flow_runner=flow_runner,
        )
    )
    print("serving", flush=True)
    await runner.astart()


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:4])
