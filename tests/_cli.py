"""The harness of the CLI tests: an orchestrator process on the session's
nats-server (module-scoped), the ``sluice`` command in-process, and ways to
wait and to move a run as the engine would. ``test_cli``, ``test_cli_runs``
and ``test_cli_watch`` share it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import pytest
from typer.testing import CliRunner, Result

from engine.cli import app
from engine.client import Client
from engine.sync import SyncClient
from services.dev import NatsServer
from shared import names
from shared.codec import encode
from shared.messages import Decision, LogRecord, ProposedState, RegisterDeployment
from shared.settings import Settings
from shared.states import StateType

T = TypeVar("T")

READY_TIMEOUT = 60.0
INSPECT_HINT = re.compile(r"sluice flow-run inspect ([0-9a-f-]{36})")
WATCHED_STATE = re.compile(r"^\d\d:\d\d:\d\d\s+Scheduled")


# --- processes ------------------------------------------------------------------------
class ServiceProcess:
    """``python <args>`` (a service) whose log (stderr) we read, to know when it is ready.

    A thread copies the log into ``lines`` as it comes and sets an event when
    the service logs ``<name> ready`` (or exits), so waiting for readiness
    blocks on that event instead of sleeping and retrying.
    """

    def __init__(self, args: list[str], env: dict[str, str], ready_marker: str) -> None:
        self.args = args
        self.env = env
        self.ready_marker = ready_marker
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> ServiceProcess:
        self._proc = subprocess.Popen(
            [sys.executable, *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        return self

    def _read_log(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self.lines.append(line)
            if self.ready_marker in line:
                self._ready.set()
        self._ready.set()  # exited: stop waiting, wait_ready() reports it

    def wait_ready(self) -> None:
        assert self._proc is not None
        if not self._ready.wait(READY_TIMEOUT) or self._proc.poll() is not None:
            raise RuntimeError(f"{' '.join(self.args)} did not start:\n{''.join(self.lines)}")

    def stop(self) -> int:
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(30)
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        assert self._proc is not None and self._proc.stderr is not None
        if self._reader is not None:
            self._reader.join(10)
        self._proc.stderr.close()


@dataclass(frozen=True)
class Stack:
    settings: Settings
    env: dict[str, str]
    """What the CLI needs in its environment to reach this stack."""

    def process_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("cli-home")
    env = {"SLUICE_NATS_URL": nats_server.url, "SLUICE_HOME": str(home)}
    settings = Settings(nats_url=nats_server.url, home=home)
    service_env = {**os.environ, **env, "SLUICE_LOG_LEVEL": "INFO"}
    orchestrator = ["-m", "services.orchestrator"]
    with ServiceProcess(orchestrator, service_env, "orchestrator ready") as proc:
        proc.wait_ready()
        answered = CliRunner().invoke(app, ["deployment", "ls", "--json"], env=env)
        assert answered.exit_code == 0, answered.output
        yield Stack(settings=settings, env=env)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[SyncClient]:
    with SyncClient(stack.settings) as c:
        yield c


# --- invoking the CLI -------------------------------------------------------------------
def sluice(stack: Stack, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=stack.env)


def sluice_json(stack: Stack, *args: str) -> Any:
    result = sluice(stack, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_fails(result: Result, code: int, *fragments: str) -> None:
    """Exited with ``code``, said each fragment on stderr, and showed no traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def eventually(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Ask again until ``check`` returns something; each try is a round trip."""
    deadline = time.monotonic() + timeout
    while (value := check()) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
    return value


def listed_ids(stack: Stack, *filters: str) -> set[str]:
    page = sluice_json(stack, "flow-run", "ls", *filters)
    return {run["id"] for run in page["flow_runs"]}


@pytest.fixture
def flow(client: SyncClient, unique: str) -> str:
    """A flow with one deployment, ``<flow>/main``, with defaults and a schema."""
    name = f"cli-flow-{unique}"
    client.register_deployment(
        RegisterDeployment(
            name="main",
            flow_name=name,
            parameters={"a": 1, "b": "x"},
            parameter_schema={
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
            },
            tags=["cli"],
        )
    )
    return name


async def move(
    settings: Settings, run_id: str, states: list[StateType], lines: list[str] | None = None
) -> None:
    """Act as the engine would: propose ``states`` in order, logging ``lines``
    after the first one."""
    async with Client(settings) as c:
        for i, state in enumerate(states):
            reply = await c.propose_state(run_id, ProposedState(type=state, message=f"to {state}"))
            assert reply.status is Decision.ACCEPT, reply
            if i == 0:
                await publish_logs(c, run_id, [(20, line) for line in lines or []])


async def publish_logs(c: Client, run_id: str, lines: list[tuple[int, str]]) -> None:
    """Publish ``(level, message)`` log records of the run, as its engine would."""
    js = c.nc.jetstream()
    for level, message in lines:
        record = LogRecord(
            flow_run_id=run_id, timestamp=datetime.now(UTC), level=level, message=message
        )
        await js.publish(names.logs_subject(run_id), encode(record))


def log(settings: Settings, run_id: str, lines: list[tuple[int, str]]) -> None:
    """:func:`publish_logs` from a test's thread."""

    async def publish() -> None:
        async with Client(settings) as c:
            await publish_logs(c, run_id, lines)

    anyio.run(publish)
