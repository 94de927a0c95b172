"""A flow runner for tests that starts tests/runner/worker.py instead of ``python -m engine``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from engine.runner._subprocess import FlowRunProcess, StartFailed, _Subprocess
from shared.models import Deployment, FlowRun, Infrastructure

WORKER = Path(__file__).with_name("worker.py")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ScriptFlowRunner:
    script: Path = WORKER
    env: dict[str, str] = field(default_factory=dict)
    type: str = "test-script"
    #: Run ids in the order their processes were started.
    started: list[str] = field(default_factory=list)

    async def start(
        self, run: FlowRun, deployment: Deployment | None, env: Mapping[str, str]
    ) -> FlowRunProcess:
        if not self.script.exists():
            raise StartFailed(f"no such script: {self.script}")
        self.started.append(run.id)
        full_env = {**os.environ, **self.env, **dict(env), "PYTHONPATH": str(ROOT)}
        process = await anyio.open_process(
            [sys.executable, str(self.script)],
            env=full_env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return _Subprocess(process)

    def to_infrastructure(self) -> Infrastructure:
        return Infrastructure(type="universal")
