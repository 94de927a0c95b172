"""Deployment bundles: a project folder shipped to runners through the object store.

Packing is pure (files in, bytes out) and tested first. Then, against a real
nats-server and real flow-run processes: a runner whose home shares no folder
with the client runs a bundled deployment from its bundle alone, picks up a
new version of the code, and reports a missing bundle as the reason its run
crashed.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import anyio
import pytest

from engine._stack.bundle_pack import pack, selected_files, unpack
from engine._stack.bundles import BundleCache, delete_bundle, list_bundles, upload
from engine.client import Client
from engine.deployments import RunnerDeployment
from engine.exceptions import BundleError
from engine.flows import flow
from engine.runner import Runner
from engine.runner._subprocess import SubprocessFlowRunner
from services.orchestrator import Orchestrator
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import StateType

from .runner.test_runner import running


def _project(folder: Path, body: str = "return 'v1'") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flows.py").write_text(
        "from engine import flow\nfrom helpers import greeting\n\n"
        "@flow(name='bundled')\ndef bundled() -> str:\n    return greeting()\n"
    )
    (folder / "helpers.py").write_text(f"def greeting() -> str:\n    {body}\n")
    return folder


# --- packing ------------------------------------------------------------------------------
def test_same_files_same_digest_and_a_change_makes_a_new_one(tmp_path: Path) -> None:
    a = _project(tmp_path / "a")
    b = _project(tmp_path / "b")
    os.utime(b / "flows.py", (1, 1))  # times and folder names do not count
    assert pack(a).digest == pack(b).digest
    (b / "helpers.py").write_text("def greeting() -> str:\n    return 'v2'\n")
    assert pack(a).digest != pack(b).digest


def test_ignored_and_always_left_out_files_stay_out(tmp_path: Path) -> None:
    folder = _project(tmp_path / "p")
    for name in (".venv/lib/x.py", "__pycache__/flows.pyc", ".git/HEAD", "data/big.csv", "s.log"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")
    (folder / ".gitignore").write_text("data/\n")
    (folder / ".sluiceignore").write_text("*.log\n")
    names = [rel for rel, _ in selected_files(folder)]
    assert names == [".gitignore", ".sluiceignore", "flows.py", "helpers.py"]


def test_a_link_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = _project(tmp_path / "p")
    secret = tmp_path / "secret.txt"
    secret.write_text("key")
    (folder / "creds.txt").symlink_to(secret)
    with pytest.raises(BundleError, match="outside the project folder"):
        pack(folder)


def test_a_folder_over_the_limit_is_refused_with_its_largest_files(tmp_path: Path) -> None:
    folder = _project(tmp_path / "p")
    (folder / "model.bin").write_bytes(b"\0" * 4096)
    with pytest.raises(BundleError, match=r"over the limit.*model\.bin.*\.sluiceignore"):
        pack(folder, limit=1024)


def test_unpack_checks_the_digest_and_refuses_paths_out(tmp_path: Path) -> None:
    packed = pack(_project(tmp_path / "p"))
    with pytest.raises(BundleError, match="corrupt"):
        unpack(packed.data + b"x", packed.digest, tmp_path / "bad")
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(tmp_path / "p" / "flows.py", arcname="../escaped.py")
    data = evil.read_bytes()
    from engine._stack.bundle_pack import digest_of

    with pytest.raises(BundleError, match="could not be unpacked"):
        unpack(data, digest_of(data), tmp_path / "out")
    assert not (tmp_path / "escaped.py").exists()


# --- the store and a runner's cache -------------------------------------------------------


@pytest.mark.anyio
async def test_upload_once_fetch_once_and_concurrent_fetches_unpack_once(
    orchestrator: Orchestrator, client: Client, tmp_path: Path
) -> None:
    js = client.nc.jetstream()
    folder = _project(tmp_path / "p")
    first = await upload(js, folder)
    again = await upload(js, folder)
    assert first == again
    assert (first.digest, first.size) in await list_bundles(js)

    cache = BundleCache(tmp_path / "runner-home" / "bundles")
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(cache.fetch, js, first)
    unpacked = cache.folder(first.digest)
    assert (unpacked / "helpers.py").read_text().endswith("return 'v1'\n")
    assert not list(cache.root.glob(".tmp-*"))

    # A crash mid-unpack leaves a staging folder and no marker: the next fetch redoes it.
    (cache.root / f".tmp-{first.digest[7:]}-1-dead").mkdir()
    (unpacked / ".sluice-bundle").unlink()
    assert await cache.fetch(js, first) == unpacked
    assert not list(cache.root.glob(".tmp-*"))


@pytest.mark.anyio
async def test_the_cache_removes_the_least_recently_used_bundle(
    orchestrator: Orchestrator, client: Client, tmp_path: Path
) -> None:
    js = client.nc.jetstream()
    bundles = [await upload(js, _project(tmp_path / f"p{i}", f"return {i}")) for i in range(3)]
    cache = BundleCache(tmp_path / "cache", max_bytes=1)  # room for the newest only
    with cache.holding(bundles[0]):
        for bundle in bundles:
            await cache.fetch(js, bundle)
    kept = {p.parent.name for p in cache.root.glob("*/.sluice-bundle")}
    # The one held by a run is kept, and so is the one just fetched.
    assert kept == {bundles[0].digest[7:], bundles[2].digest[7:]}


@pytest.mark.anyio
async def test_a_runner_with_no_copy_of_the_code_runs_the_bundle_and_its_new_version(
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = _project(tmp_path / "client-side")
    monkeypatch.chdir(project)
    import importlib.util
    import sys

    sys.path.insert(0, str(project))
    try:
        spec = importlib.util.spec_from_file_location(f"flows_{unique}", project / "flows.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(project))
    deployment = RunnerDeployment.from_flow(module.bundled, unique, bundle=True)
    assert deployment.path == str(project) and deployment.entrypoint == "flows.py:bundled"
    stored = await deployment.register(client)
    assert stored.bundle is not None and stored.bundle.files == 2

    # The runner's home is elsewhere and the client's folder is renamed away:
    # only the bundle has the code.
    runner_settings = Settings(nats_url=settings.nats_url, home=tmp_path / "runner-home")
    monkeypatch.setenv("SLUICE_NATS_URL", settings.nats_url)
    monkeypatch.chdir(tmp_path)
    project.rename(tmp_path / "moved-away")
    r = Runner(name=f"b-{unique}", settings=runner_settings, flow_runner=SubprocessFlowRunner())
    await r.aserve_deployment(f"bundled/{unique}")
    async with running(r):
        run = await client.create_flow_run(f"bundled/{unique}")
        done = await client.wait_for_flow_run(run.id)
        assert done.state.type is StateType.COMPLETED, done.state.message
        assert done.state.data == "v1"

        # A new version of the code: a new digest, picked up by the next run.
        newer = _project(tmp_path / "moved-away", "return 'v2'")
        v2 = RunnerDeployment.from_flow(
            module.bundled, unique, bundle=True, path=newer, entrypoint="flows.py:bundled"
        )
        assert (await v2.register(client)).bundle != stored.bundle
        done = await client.wait_for_flow_run((await client.create_flow_run(v2.full_name)).id)
        assert done.state.type is StateType.COMPLETED, done.state.message
        assert done.state.data == "v2"

        # A bundle gone from the store: the run crashes and says why.
        assert stored.bundle is not None
        latest = await client.read_deployment(v2.full_name)
        assert latest.bundle is not None
        await delete_bundle(client.nc.jetstream(), latest.bundle.digest)
        runner_cache = runner_settings.home / "bundles" / latest.bundle.digest[7:]
        for path in sorted(runner_cache.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        runner_cache.rmdir()
        done = await client.wait_for_flow_run((await client.create_flow_run(v2.full_name)).id)
    assert done.state.type is StateType.CRASHED
    assert "is not in the sluice_bundles store" in (done.state.message or "")


def test_a_flow_defined_here_bundles_its_own_folder() -> None:
    @flow(name="here")
    def here() -> None:
        return None

    deployment = RunnerDeployment.from_flow(here, "d", bundle=True)
    assert deployment.path == str(Path(__file__).resolve().parent)
    assert deployment.entrypoint == f"{Path(__file__).name}:here"


# --- requirements ---------------------------------------------------------------------------
DEP_FLOW = """
from engine import flow


@flow(name="{name}")
def uses_dep() -> str:
    import tinydep

    return tinydep.VALUE
"""


def _wheel(folder: Path) -> str:
    """A tiny pure-Python wheel, built by hand, so pip installs it with no index."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    name = "tinydep-0.1-py3-none-any.whl"
    files = {
        "tinydep/__init__.py": "VALUE = 'from the bundle requirements'\n",
        "tinydep-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinydep\nVersion: 0.1\n",
        "tinydep-0.1.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "tinydep-0.1.dist-info/RECORD"
    files[record] = "".join(f"{path},,\n" for path in [*files, record])
    with zipfile.ZipFile(folder / name, "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    return name


async def _bundled_run(
    client: Client, settings: Settings, tmp_path: Path, unique: str, requirements: str, **kw: bool
) -> tuple[str, FlowRun]:
    project = tmp_path / f"dep-{len(requirements)}"
    project.mkdir()
    (project / "flows.py").write_text(DEP_FLOW.format(name=f"dep-{unique}"))
    (project / "requirements.txt").write_text(requirements.format(wheel=_wheel(project / "wheels")))
    deployment = RunnerDeployment(
        name="d",
        flow_name=f"dep-{unique}",
        entrypoint="flows.py:uses_dep",
        path=str(project),
        bundle=True,
    )
    await deployment.register(client)
    home = tmp_path / f"runner-{len(requirements)}"
    r = Runner(
        name=f"dep-{unique}-{len(requirements)}",
        settings=Settings(nats_url=settings.nats_url, home=home),
        flow_runner=SubprocessFlowRunner(),
        **kw,
    )
    await r.aserve_deployment(deployment.full_name)
    async with running(r):
        run = await client.create_flow_run(deployment.full_name)
        done = await client.wait_for_flow_run(run.id)
    return run.id, done


@pytest.mark.anyio
async def test_a_bundles_requirements_are_installed_in_an_environment_of_its_own(
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_NATS_URL", settings.nats_url)
    good = "--no-index\n./wheels/{wheel}\n"
    _, done = await _bundled_run(
        client, settings, tmp_path, unique, good, install_requirements=True
    )
    assert done.state.type is StateType.COMPLETED, done.state.message
    assert done.state.data == "from the bundle requirements"

    broken = "--no-index\nno-such-package-sluice-test==9.9\n"
    _, done = await _bundled_run(
        client, settings, tmp_path, unique, broken, install_requirements=True
    )
    assert done.state.type is StateType.CRASHED
    message = done.state.message or ""
    assert "installing the bundle's requirements failed" in message, message
    assert "no-such-package-sluice-test" in message, message


@pytest.mark.anyio
async def test_a_runner_that_did_not_opt_in_says_so_in_the_runs_log(
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_NATS_URL", settings.nats_url)
    run_id, done = await _bundled_run(
        client, settings, tmp_path, unique, "--no-index\n./wheels/{wheel}\n  \n"
    )
    assert done.state.type is StateType.FAILED  # tinydep is not installed
    lines = [r.message async for r in client.logs(run_id)]
    assert any("does not install a flow's requirements" in line for line in lines), lines
