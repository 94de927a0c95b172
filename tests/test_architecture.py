"""The engine's layout: documented import paths work, and imports point down only.

Layers, lowest first (see docs/architecture.md). A module may import its own
layer and the layers below it at run time; ``if TYPE_CHECKING:`` imports may
cross freely. The few deferred imports that call upward are listed in
``UPWARD`` with the reason, so a new one is a decision, not an accident.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "engine"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("states", "exceptions", "triggers", "results", "executors", "_lazy")),
    ("run-time", ("_core", "futures")),
    ("flows and tasks", ("flows", "tasks")),
    ("client", ("client", "sync")),
    ("stack", ("_stack",)),
    ("runs and deployments", ("runs", "deployments", "_deployment_parts")),
    ("runner", ("runner", "flow_runners", "fork_runner", "docker_runner")),
    ("cli", ("cli",)),
]

#: Deferred imports that call a higher layer, each a convenience of the lower one.
UPWARD = {
    # A flow called with SLUICE_NATS_URL set reports to that stack.
    ("engine._core.flow_engine", "engine._stack.reporter"),
    # Flow.to_deployment() and Flow.serve(), as Prefect's flows have them.
    ("engine.flows", "engine.deployments"),
    ("engine.flows", "engine.runner"),
    # A deployment's default flow runner (UniversalFlowRunner).
    ("engine.deployments", "engine.runner._subprocess"),
}

#: Every import path the README, docs/, the examples or the seeds show.
DOCUMENTED = {
    "engine": [
        "flow",
        "task",
        "Flow",
        "Task",
        "Runner",
        "serve",
        "DeploymentSpec",
        "RunnerDeployment",
        "Client",
        "SyncClient",
        "create_flow_run",
        "wait_for_flow_run",
        "get_run_logger",
        "get_run_context",
        "unmapped",
        "LocalExecutor",
        "ThreadPoolExecutor",
        "ConcurrentExecutor",
        "DaskExecutor",
        "TaskFuture",
        "FlowRunResult",
    ],
    "engine.deployments": ["DeploymentSpec", "RunnerDeployment", "load_specs"],
    "engine.flow_runners": [
        "SubprocessFlowRunner",
        "UniversalFlowRunner",
        "DockerFlowRunner",
        "ForkServerFlowRunner",
        "FlowRunner",
    ],
    "engine.docker_runner": ["DockerFlowRunner"],
    "engine.fork_runner": ["ForkServerFlowRunner"],
    "engine.runner": ["Runner", "serve"],
    "engine.triggers": ["all_successful", "any_failed", "always_run"],
    "engine.exceptions": ["ParameterError", "FlowRunFailed"],
    "engine.executors": ["LocalExecutor", "DaskExecutor"],
    "engine.client": ["Client"],
    "engine.sync": ["SyncClient"],
    "engine.runs": ["create_flow_run", "wait_for_flow_run"],
    "engine.states": [],
    "engine.results": [],
    "engine.flows": ["flow"],
    "engine.tasks": ["task"],
}


@pytest.mark.parametrize("module", sorted(DOCUMENTED))
def test_documented_import_paths(module: str) -> None:
    imported = importlib.import_module(module)
    for name in DOCUMENTED[module]:
        assert getattr(imported, name) is not None, f"{module}.{name}"


def test_every_public_engine_name_imports() -> None:
    import engine

    for name in engine.__all__:
        assert getattr(engine, name) is not None, name


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "engine" or len(parts) == 1:
        return None  # the package facade (engine/__init__) re-exports every layer
    for rank, (_, names) in enumerate(LAYERS):
        if parts[1] in names:
            return rank
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ENGINE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(path: Path) -> set[str]:
    """Modules ``path`` imports when it runs, leaving out ``if TYPE_CHECKING:`` blocks."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
            else:
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:  # `from engine import states` imports a module
                found.add(f"{target}.{alias.name}")

    Visitor().visit(ast.parse(path.read_text()))
    return {name for name in found if _layer(name) is not None or name == "engine"}


def test_imports_point_down() -> None:
    wrong = []
    for path in sorted(ENGINE.rglob("*.py")):
        module = _module_name(path)
        own = _layer(module)
        if own is None:
            continue
        for target in _runtime_imports(path):
            other = _layer(target)
            if other is None or other <= own:
                continue
            if any(module == a and (target == b or target.startswith(b + ".")) for a, b in UPWARD):
                continue
            wrong.append(f"{module} ({LAYERS[own][0]}) imports {target} ({LAYERS[other][0]})")
    assert not wrong, "imports that point up a layer:\n" + "\n".join(wrong)


def test_every_engine_module_belongs_to_a_layer() -> None:
    loose = [
        _module_name(path)
        for path in ENGINE.rglob("*.py")
        if _layer(_module_name(path)) is None
        and _module_name(path) not in {"engine", "engine.__main__"}
    ]
    assert not loose, f"put these in a layer of LAYERS: {loose}"


def test_each_subpackage_imports_alone() -> None:
    """A fresh interpreter imports each subpackage first: an import cycle would fail here."""
    for package in (
        "engine._core",
        "engine._stack",
        "engine.runner",
        "engine.cli",
        "engine.flow_runners",
        "engine.deployments",
        "engine.runs",
    ):
        done = subprocess.run(
            [sys.executable, "-c", f"import {package}"], capture_output=True, text=True
        )
        assert done.returncode == 0, f"import {package}:\n{done.stderr}"
