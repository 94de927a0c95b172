"""``sluice deployment create --bundle``, ``deployment inspect`` and ``sluice bundle ls|gc``.

Against the session's nats-server and an orchestrator process (the fixtures of
``test_cli_deployments``), as a user at the command line would.
"""

from __future__ import annotations

from pathlib import Path

from .test_cli_deployments import Stack, assert_fails, client, sluice, sluice_json, stack

__all__ = ["client", "stack"]  # fixtures, used by name

SPEC = """
from engine import flow
from engine.deployments import DeploymentSpec


@flow(name="{flow}")
def pipeline() -> str:
    return "{answer}"


nightly = DeploymentSpec(name="nightly", flow=pipeline)
"""


def _write(folder: Path, flow: str, answer: str) -> Path:
    folder.mkdir(exist_ok=True)
    spec = folder / f"spec_{flow.replace('-', '_')}_{answer}.py"
    for old in folder.glob("spec_*.py"):
        old.unlink()
    spec.write_text(SPEC.format(flow=flow, answer=answer))
    (folder / "notes.log").write_text("left out by .sluiceignore")
    (folder / ".sluiceignore").write_text("*.log\n")
    return spec


def test_bundle_create_inspect_list_and_gc(stack: Stack, tmp_path: Path, unique: str) -> None:
    flow = f"bundled-{unique}"
    spec = _write(tmp_path / "project", flow, "v1")
    first = sluice_json(stack, "deployment", "create", str(spec), "--bundle")
    (deployment,) = first
    digest = deployment["bundle"]["digest"]
    assert digest.startswith("sha256:") and deployment["bundle"]["files"] == 2

    again = sluice_json(stack, "deployment", "create", str(spec), "--bundle")
    assert again[0]["bundle"]["digest"] == digest  # same content, same bundle

    shown = sluice(stack, "deployment", "inspect", f"{flow}/nightly")
    assert shown.exit_code == 0, shown.output
    assert digest in shown.stdout and "2 files" in shown.stdout

    listed = {b["digest"]: b for b in sluice_json(stack, "bundle", "ls")}
    assert listed[digest]["deployments"] == [f"{flow}/nightly@-"]

    # New code under the same name and version replaces the deployment: the
    # old bundle is then referenced by nothing, and gc removes it.
    spec = _write(tmp_path / "project", flow, "v2")
    newer = sluice_json(stack, "deployment", "create", str(spec), "--bundle")[0]["bundle"]
    assert newer["digest"] != digest
    dry = sluice(stack, "bundle", "gc", "--dry-run")
    assert dry.exit_code == 0 and f"Would remove {digest}" in dry.stdout, dry.output
    assert digest in {b["digest"] for b in sluice_json(stack, "bundle", "ls")}
    done = sluice(stack, "bundle", "gc")
    assert done.exit_code == 0 and f"Removed {digest}" in done.stdout, done.output
    remaining = {b["digest"] for b in sluice_json(stack, "bundle", "ls")}
    assert digest not in remaining and newer["digest"] in remaining


def test_a_folder_over_the_limit_is_refused_clearly(
    stack: Stack, tmp_path: Path, unique: str
) -> None:
    spec = _write(tmp_path / "big", f"big-{unique}", "v1")
    (tmp_path / "big" / "weights.bin").write_bytes(b"\0" * 300_000)
    env = {**stack.env, "SLUICE_BUNDLE_LIMIT_MB": "0.1"}
    result = sluice(
        Stack(settings=stack.settings, env=env), "deployment", "create", str(spec), "--bundle"
    )
    assert_fails(result, 1, "over the limit", "weights.bin")
