"""Fixtures for the engine against a real stack: the session's nats-server, an
orchestrator process for this package, and helpers to run ``python -m engine``.

The orchestrator runs as a process (not the in-process fixture) because most
tests here are synchronous: the flow, the CLI and ``python -m engine`` each
block while they run, and an orchestrator on the test's event loop would
stall with them. Every deployment carries a unique name, since the server is
shared by the whole session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from engine._core.resume import read_task_records
from engine.client import Client
from engine.sync import SyncClient
from services.dev import NatsServer
from shared.messages import LogRecord, RegisterDeployment, TaskRunRecord
from shared.models import Deployment
from shared.settings import Settings

from .._procs import start_service, wait_until_serving

T = TypeVar("T")

FLOWS = Path(__file__).parent / "flows"
REPO = Path(__file__).parents[2]
ENGINE_TIMEOUT = 90.0


@dataclass(frozen=True)
class Stack:
    settings: Settings
    env: dict[str, str]
    """What a process needs in its environment to reach this stack."""

    def process_env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_FLOW_RUN")}
        return {**base, **self.env, **extra}

    def run_engine(
        self, run_id: str, *, attempt: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``python -m engine`` for one run, as a runner would start it."""
        extra = {"SLUICE_FLOW_RUN_ID": run_id}
        if attempt is not None:
            extra["SLUICE_FLOW_RUN_ATTEMPT"] = str(attempt)
        return subprocess.run(
            [sys.executable, "-m", "engine"],
            env=self.process_env(**extra),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=ENGINE_TIMEOUT,
            check=False,
        )

    def start_engine(self, run_id: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "engine", "--flow-run-id", run_id],
            env=self.process_env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def call(self, fn: Callable[[Client], Any]) -> Any:
        """Run ``await fn(client)`` on a fresh event loop with a connected client."""

        async def main() -> Any:
            async with Client(self.settings) as client:
                return await fn(client)

        return anyio.run(main)

    def task_records(self, run_id: str) -> list[TaskRunRecord]:
        return self.call(lambda c: read_task_records(c.nc, run_id))  # type: ignore[no-any-return]

    def final_records(self, run_id: str) -> dict[str, TaskRunRecord]:
        """The newest record of each task key."""
        return {r.task_key: r for r in self.task_records(run_id)}

    def logs(self, run_id: str) -> list[LogRecord]:
        async def read(client: Client) -> list[LogRecord]:
            return [record async for record in client.logs(run_id)]

        return self.call(read)  # type: ignore[no-any-return]


@pytest.fixture(scope="package")
def stack(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("engine-stack-home")
    settings = Settings(nats_url=nats_server.url, home=home)
    proc = start_service("services.orchestrator", settings, home / "orchestrator.log")
    try:
        anyio.run(wait_until_serving, settings, proc)
        yield Stack(settings, {"SLUICE_NATS_URL": nats_server.url, "SLUICE_HOME": str(home)})
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="package")
def client(stack: Stack) -> Iterator[SyncClient]:
    with SyncClient(stack.settings) as c:
        yield c


@pytest.fixture
def deploy(client: SyncClient, unique: str) -> Callable[..., Deployment]:
    """Register ``<flow>/t-<unique>`` with an entrypoint in tests/engine_stack/flows."""

    def register(flow_name: str, entrypoint: str, **options: Any) -> Deployment:
        return client.register_deployment(
            RegisterDeployment(
                name=f"t-{unique}",
                flow_name=flow_name,
                entrypoint=entrypoint,
                path=str(FLOWS),
                enforce_parameter_schema=False,
                **options,
            )
        )

    return register
