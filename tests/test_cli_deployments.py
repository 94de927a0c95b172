"""``sluice deployment create FILE`` and ``sluice deployment run``, against a real stack.

The session's nats-server plus an orchestrator process for this module
(``tests/_cli.py``, as for ``test_cli.py``: each CLI command runs its own
event loop with ``anyio.run``, so the in-process orchestrator fixture will
not do). Spec files and the flows
they name are written into ``tmp_path``; every flow name carries a unique
suffix because the server is shared by the whole session, and every flow
module has a unique name because imported modules stay in ``sys.modules``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.client import Client
from engine.runner._docker import DockerFlowRunner
from engine.runner._subprocess import from_infrastructure
from engine.sync import SyncClient
from shared.messages import Decision, ProposedState
from shared.settings import Settings
from shared.states import StateType

from . import _cli
from ._cli import INSPECT_HINT, Stack, assert_fails, sluice, sluice_json

# The module-scoped stack and the fixtures built on it (tests/_cli.py).
stack = _cli.stack
client = _cli.client


# --- spec files ---------------------------------------------------------------------------
FLOWS = """
from engine import flow


@flow(name="{flow}")
def greet(name: str = "world", times: int = 1) -> str:
    return " ".join(["hello " + name] * times)
"""

SPEC = """
from engine.deployments import DeploymentSpec
from engine.runner._docker import DockerFlowRunner

from {module} import greet

main = DeploymentSpec(name="main", flow=greet, parameters={{"name": "spec"}}, tags=["spec"])
boxed = DeploymentSpec(
    name="boxed",
    flow_location="{module}.py:greet",
    flow_runner=DockerFlowRunner(image="acme/flows:2", networks=["backend"]),
    version="7",
)
"""


@dataclass(frozen=True)
class Spec:
    file: Path
    flow: str
    module: str


@pytest.fixture
def spec(tmp_path: Path, unique: str) -> Spec:
    """A spec file declaring ``<flow>/main`` (a subprocess) and ``<flow>/boxed`` (Docker)."""
    flow, module = f"greet-{unique}", f"flows_{unique}"
    (tmp_path / f"{module}.py").write_text(FLOWS.format(flow=flow))
    file = tmp_path / "deployments.py"
    file.write_text(SPEC.format(module=module))
    return Spec(file=file, flow=flow, module=module)


# --- sluice deployment create ------------------------------------------------------------
def test_create_registers_every_spec(stack: Stack, client: SyncClient, spec: Spec) -> None:
    result = sluice(stack, "deployment", "create", str(spec.file))
    assert result.exit_code == 0, result.output
    assert "Registered 2 deployments from" in result.stdout
    main = client.read_deployment(f"{spec.flow}/main")
    boxed = client.read_deployment(f"{spec.flow}/boxed")
    for deployment in (main, boxed):
        assert deployment.full_name in result.stdout
        assert deployment.id in result.stdout
    assert f"sluice deployment run {spec.flow}/main" in result.stdout

    assert main.entrypoint == f"{spec.module}.py:greet"
    assert main.path == str(spec.file.parent.resolve())
    assert main.parameters == {"name": "spec"}
    assert main.tags == ["spec"]
    assert set(main.parameter_schema["properties"]) == {"name", "times"}
    assert main.infrastructure.type == "universal"

    assert boxed.version == "7"
    assert boxed.infrastructure.type == "docker"
    runner = from_infrastructure(boxed.infrastructure, DockerFlowRunner())
    assert runner == DockerFlowRunner(image="acme/flows:2", networks=["backend"])


def test_create_json_lists_what_was_registered(stack: Stack, spec: Spec) -> None:
    registered = sluice_json(stack, "deployment", "create", str(spec.file))
    assert [d["name"] for d in registered] == ["main", "boxed"]
    again = sluice_json(stack, "deployment", "create", str(spec.file))
    assert [d["id"] for d in again] == [d["id"] for d in registered]  # same versions: updated


def test_create_a_missing_file(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a short path, so the usage box does not wrap it
    result = sluice(stack, "deployment", "create", "nope.py")
    assert_fails(result, 2, "Invalid value for 'FILE'", "'nope.py' does not exist")


def test_create_a_file_without_specs(stack: Stack, tmp_path: Path) -> None:
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    assert_fails(
        sluice(stack, "deployment", "create", str(empty)), 1, "error:", "declares no DeploymentSpec"
    )


def test_create_a_spec_whose_flow_cannot_be_found(stack: Stack, spec: Spec) -> None:
    wrong = spec.file.parent / "wrong.py"
    wrong.write_text(
        "from engine.deployments import DeploymentSpec\n"
        f"d = DeploymentSpec(name='x', flow_location='{spec.module}.py:nope')\n"
    )
    assert_fails(
        sluice(stack, "deployment", "create", str(wrong)), 1, "error:", "has no flow 'nope'"
    )


def test_create_a_spec_file_that_raises(stack: Stack, tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import math\n\nvalue = math.floor(1) / 0\n")
    assert_fails(
        sluice(stack, "deployment", "create", str(broken)),
        1,
        f"could not load {broken}: ZeroDivisionError",
        f"{broken}:3",
    )


def test_create_needs_no_stack_to_report_a_bad_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.py"
    empty.write_text("")
    env = {"SLUICE_NATS_URL": "nats://127.0.0.1:9", "SLUICE_HOME": str(tmp_path)}
    result = CliRunner().invoke(app, ["deployment", "create", str(empty)], env=env)
    assert_fails(result, 1, "declares no DeploymentSpec")


# --- sluice deployment run -----------------------------------------------------------------
@pytest.fixture
def created(stack: Stack, spec: Spec) -> Spec:
    sluice_json(stack, "deployment", "create", str(spec.file))
    return spec


def test_run_a_deployment(stack: Stack, client: SyncClient, created: Spec) -> None:
    result = sluice(stack, "deployment", "run", f"{created.flow}/main")
    assert result.exit_code == 0, result.output
    assert "Created flow run" in result.stdout
    assert "Scheduled" in result.stdout
    match = INSPECT_HINT.search(result.stdout)
    assert match, result.stdout
    run = client.read_flow_run(match[1])
    assert run.deployment_name == f"{created.flow}/main"
    assert run.parameters == {"name": "spec"}


def test_run_with_parameters(stack: Stack, created: Spec) -> None:
    run = sluice_json(
        stack,
        "deployment",
        "run",
        f"{created.flow}/main",
        "--params",
        '{"name": "json", "times": 2}',
        "--param",
        "times=3",
        "--tag",
        "cli",
    )
    assert run["parameters"] == {"name": "json", "times": 3}
    assert "cli" in run["tags"]
    assert run["state"]["type"] == "SCHEDULED"


def test_run_by_id(stack: Stack, client: SyncClient, created: Spec) -> None:
    deployment = client.read_deployment(f"{created.flow}/boxed")
    run = sluice_json(stack, "deployment", "run", "--id", deployment.id)
    assert run["deployment_id"] == deployment.id


def test_run_usage_errors(stack: Stack, created: Spec) -> None:
    name = f"{created.flow}/main"
    assert_fails(sluice(stack, "deployment", "run"), 2, "FLOW/DEPLOYMENT")
    assert_fails(sluice(stack, "deployment", "run", name, "--param", "novalue"), 2, "--param")
    assert_fails(sluice(stack, "deployment", "run", name, "--params", "[1]"), 2, "--params")
    assert_fails(
        sluice(stack, "deployment", "run", f"{created.flow}/nothing"),
        1,
        "error:",
        f"{created.flow}/nothing",
    )


async def complete(settings: Settings, run_id: str) -> None:
    """Act as the engine would: Running, then Completed."""
    async with Client(settings) as c:
        for state in (StateType.RUNNING, StateType.COMPLETED):
            reply = await c.propose_state(run_id, ProposedState(type=state))
            assert reply.status is Decision.ACCEPT, reply


def test_run_watch_follows_to_the_end(stack: Stack, client: SyncClient, created: Spec) -> None:
    """--watch is sluice run's: with the same idempotency key the finished run comes back."""
    name, key = f"{created.flow}/main", f"watch-{created.flow}"
    run = client.create_flow_run(name, idempotency_key=key)
    anyio.run(complete, stack.settings, run.id)
    result = sluice(stack, "deployment", "run", name, "--idempotency-key", key, "--watch")
    assert result.exit_code == 0, result.output
    assert "Completed" in result.stdout
    final = sluice_json(stack, "deployment", "run", name, "--idempotency-key", key, "--watch")
    assert final["id"] == run.id
    assert final["state"]["type"] == "COMPLETED"
