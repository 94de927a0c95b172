"""Git sources: ``source="git+URL@REF"`` runs the flow from a repository, fetched by the runner.

A real local repository (``git+file://``), so no network is needed; a real
nats-server and real flow-run processes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine.client import Client
from engine.deployments import RunnerDeployment, parse_source
from engine.runner import Runner
from engine.runner._subprocess import SubprocessFlowRunner
from services.orchestrator import Orchestrator
from shared.settings import Settings
from shared.states import StateType

from .runner.test_runner import running

FLOW = """
from engine import flow


@flow(name="{name}")
def version() -> str:
    return "{answer}"
"""


def test_the_source_form() -> None:
    assert parse_source("git+file:///srv/repo@main") == ("file:///srv/repo", "main")
    assert parse_source("git+ssh://git@example.org/acme/flows.git@v1.2") == (
        "ssh://git@example.org/acme/flows.git",
        "v1.2",
    )
    assert parse_source("git+https://example.org/acme/flows.git") == (
        "https://example.org/acme/flows.git",
        "HEAD",
    )
    with pytest.raises(ValueError, match="carries a password"):
        parse_source("git+https://bot:s3cret@example.org/acme/flows.git@main")
    with pytest.raises(ValueError, match="git\\+URL@REF"):
        parse_source("https://example.org/acme/flows.git")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def _commit(repo: Path, name: str, answer: str) -> None:
    (repo / "flows.py").write_text(FLOW.format(name=name, answer=answer))
    _git(repo, "add", "flows.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", answer)


@pytest.mark.anyio
async def test_a_runner_runs_the_refs_newest_commit_and_a_tag_stays_put(
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    name = f"git-{unique}"
    _commit(repo, name, "v1")
    _git(repo, "tag", "v1")

    def deployment(label: str, ref: str) -> RunnerDeployment:
        return RunnerDeployment(
            name=label,
            flow_name=name,
            entrypoint="flows.py:version",
            path=str(tmp_path / "nowhere"),
            source=f"git+file://{repo}@{ref}",
        )

    branch, tag, missing = (
        deployment("main", "main"),
        deployment("v1", "v1"),
        deployment("x", "nope"),
    )
    for d in (branch, tag, missing):
        await d.register(client)
    monkeypatch.setenv("SLUICE_NATS_URL", settings.nats_url)
    r = Runner(
        name=f"git-{unique}",
        settings=Settings(nats_url=settings.nats_url, home=tmp_path / "runner-home"),
        flow_runner=SubprocessFlowRunner(),
    )
    for d in (branch, tag, missing):
        await r.aserve_deployment(d.full_name)

    async def result(d: RunnerDeployment) -> tuple[StateType, object]:
        done = await client.wait_for_flow_run((await client.create_flow_run(d.full_name)).id)
        return (
            done.state.type,
            done.state.data if done.state.type is StateType.COMPLETED else done.state.message,
        )

    async with running(r):
        assert await result(branch) == (StateType.COMPLETED, "v1")
        _commit(repo, name, "v2")
        assert await result(branch) == (StateType.COMPLETED, "v2")  # the branch moved
        assert await result(tag) == (StateType.COMPLETED, "v1")  # the tag did not
        state, message = await result(missing)
    assert state is StateType.CRASHED
    assert "has no branch, tag or commit named 'nope'" in str(message)
