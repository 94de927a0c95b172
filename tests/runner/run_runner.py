"""A runner process for crash tests: serves one deployment with the test worker script.

Usage: python run_runner.py NAME DEPLOYMENT_ID (stack settings from SLUICE_* env).
"""

from __future__ import annotations

import sys

import anyio

from engine.runner import Runner
from tests.runner._script import ScriptFlowRunner


async def main(name: str, deployment_id: str) -> None:
    runner = Runner(name=name, flow_runner=ScriptFlowRunner(), query_seconds=1.0)
    await runner.aserve_deployment(deployment_id)
    await runner.astart()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
