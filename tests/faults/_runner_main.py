"""A runner process for fault tests, serving one deployment with the stand-in flow process.

Usage: python _runner_main.py NAME DEPLOYMENT_ID LIMIT (stack settings from SLUICE_* env).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio

from engine.runner import Runner
from tests.runner._script import ScriptFlowRunner

FLOWPROC = Path(__file__).with_name("_flowproc.py")


async def main(name: str, deployment_id: str, limit: str) -> None:
    runner = Runner(
        name=name,
        limit=int(limit),
        flow_runner=ScriptFlowRunner(script=FLOWPROC),
        query_seconds=1.0,
        kill_grace=1.0,
        drain_seconds=0.0,  # a stop kills at once: these tests are about the kill paths
    )
    await runner.aserve_deployment(deployment_id)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.astart)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break  # a clean stop: the runner's own shutdown stops its processes
        await runner.astop()


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:4])
