"""``DockerFlowRunner``: the container it asks for, and the Docker API conversation.

Three layers. Pure tests of the create request, pull policy and stored
infrastructure always run. A fake Docker engine (``tests/fake_docker.py``: a few
endpoints served from memory on a unix socket in this process) proves the HTTP/1.1 client and the
lifecycle (pull, create, connect, wait, start, logs, stop, remove) without
Docker. One live test runs a real container, and is skipped unless
``docker info`` succeeds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec
import pytest

from engine.client import Client
from engine.deployments import RunnerDeployment
from engine.runner import Runner
from engine.runner._docker import (
    DockerFlowRunner,
    container_name,
    container_request,
    default_image,
    needs_pull,
    rewrite_loopback,
    split_image,
)
from engine.runner._docker_api import demultiplex, endpoint
from engine.runner._docker_container import LOST_EXIT_CODE
from engine.runner._subprocess import (
    StartFailed,
    SubprocessFlowRunner,
    explain_exit,
    from_infrastructure,
)
from services.dev import free_port
from services.orchestrator import Orchestrator
from shared.models import Deployment, FlowRun, Infrastructure
from shared.settings import Settings
from shared.states import State, StateType

from .fake_docker import IMAGE, FakeDocker, frame

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
RUN_ID = "0b5c1f3e-9d2a-4c7b-8e6f-1a2b3c4d5e6f"


def make_run(name: str = "brave-otter") -> FlowRun:
    return FlowRun(
        id=RUN_ID,
        name=name,
        flow_name="etl",
        deployment_id="dep-1",
        state=State(type=StateType.PENDING, name="Pending", timestamp=NOW),
        created=NOW,
        updated=NOW,
        expected_start_time=NOW,
        attempt=2,
    )


def make_deployment(path: str | None = None, env: dict[str, str] | None = None) -> Deployment:
    return Deployment(
        id="dep-1",
        name="nightly",
        flow_name="etl",
        path=path,
        infrastructure=Infrastructure(type="docker", env=env or {}),
        created=NOW,
        updated=NOW,
    )


RUN_ENV = {
    "SLUICE_FLOW_RUN_ID": RUN_ID,
    "SLUICE_FLOW_RUN_ATTEMPT": "2",
    "SLUICE_NATS_URL": "nats://nats.internal:4222",
}


def env_of(request: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in request["Env"])


# --- the create request (pure) -------------------------------------------------------
def test_container_request_basics() -> None:
    runner = DockerFlowRunner(
        image="acme/flows:2",
        volumes=["/data:/data:ro", "cache:/cache"],
        networks=["backend"],
        auto_remove=True,
        mount_code=False,
    )
    request = container_request(make_run(), make_deployment(), RUN_ENV, runner)
    assert request["Image"] == "acme/flows:2"
    assert request["Cmd"] == ["python", "-m", "engine"]
    assert request["Tty"] is False
    host = request["HostConfig"]
    assert host["Binds"] == ["/data:/data:ro", "cache:/cache"]
    assert host["AutoRemove"] is True
    assert host["NetworkMode"] == "backend"
    assert host["Init"] is True  # SIGTERM from `docker stop` must reach Python
    assert "ExtraHosts" not in host
    assert "WorkingDir" not in request


def test_the_default_image_follows_the_installed_version() -> None:
    runner = DockerFlowRunner()
    request = container_request(make_run(), None, RUN_ENV, runner)
    assert request["Image"] == default_image() == f"sluice:{metadata.version('sluice')}"
    assert "NetworkMode" not in request["HostConfig"]
    assert request["HostConfig"]["AutoRemove"] is False


def test_environment_runner_then_deployment_then_run() -> None:
    runner = DockerFlowRunner(env={"A": "runner", "B": "runner", "SLUICE_FLOW_RUN_ID": "nope"})
    deployment = make_deployment(env={"B": "deployment", "C": "deployment"})
    env = env_of(container_request(make_run(), deployment, RUN_ENV, runner))
    assert env == {"A": "runner", "B": "deployment", "C": "deployment", **RUN_ENV}


def test_labels_name_the_run_and_deployment_over_the_users() -> None:
    runner = DockerFlowRunner(labels={"team": "data", "sluice.flow-run-id": "spoofed"})
    labels = container_request(make_run(), make_deployment(), RUN_ENV, runner)["Labels"]
    assert labels == {
        "team": "data",
        "sluice.flow-run-id": RUN_ID,
        "sluice.flow-run-name": "brave-otter",
        "sluice.flow-name": "etl",
        "sluice.deployment-id": "dep-1",
        "sluice.deployment-name": "etl/nightly",
    }
    without = container_request(make_run(), None, RUN_ENV, runner)["Labels"]
    assert without["sluice.deployment-id"] == "dep-1"  # from the run
    assert "sluice.deployment-name" not in without


def test_a_loopback_nats_url_points_at_the_host_gateway() -> None:
    env = {**RUN_ENV, "SLUICE_NATS_URL": "nats://127.0.0.1:4222"}
    request = container_request(make_run(), None, env, DockerFlowRunner())
    assert env_of(request)["SLUICE_NATS_URL"] == "nats://host.docker.internal:4222"
    assert request["HostConfig"]["ExtraHosts"] == ["host.docker.internal:host-gateway"]


def test_on_the_host_network_nothing_is_rewritten() -> None:
    env = {**RUN_ENV, "SLUICE_NATS_URL": "nats://localhost:4222"}
    request = container_request(make_run(), None, env, DockerFlowRunner(networks=["host"]))
    assert env_of(request)["SLUICE_NATS_URL"] == "nats://localhost:4222"
    assert request["HostConfig"]["NetworkMode"] == "host"
    assert "ExtraHosts" not in request["HostConfig"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("nats://127.0.0.1:4222", "nats://host.docker.internal:4222"),
        ("nats://127.1.2.3", "nats://host.docker.internal"),
        ("nats://LOCALHOST:4222", "nats://host.docker.internal:4222"),
        ("tls://[::1]:4443", "tls://host.docker.internal:4443"),
        ("nats://0.0.0.0:4222", "nats://host.docker.internal:4222"),
        ("nats://me:secret@localhost:4222", "nats://me:secret@host.docker.internal:4222"),
        ("nats://a:1,nats://127.0.0.1:2", "nats://a:1,nats://host.docker.internal:2"),
        ("nats://nats:4222", "nats://nats:4222"),
        ("nats://10.0.0.5:4222", "nats://10.0.0.5:4222"),
    ],
)
def test_rewrite_loopback(given: str, expected: str) -> None:
    assert rewrite_loopback(given) == expected


def test_mount_code_binds_the_deployment_folder_read_only(tmp_path: Path) -> None:
    deployment = make_deployment(path=str(tmp_path))
    request = container_request(make_run(), deployment, RUN_ENV, DockerFlowRunner(volumes=["v:/v"]))
    assert request["HostConfig"]["Binds"] == ["v:/v", f"{tmp_path}:{tmp_path}:ro"]
    assert request["WorkingDir"] == str(tmp_path)

    off = container_request(make_run(), deployment, RUN_ENV, DockerFlowRunner(mount_code=False))
    assert off["HostConfig"]["Binds"] == []
    # A folder this host does not have is the image's business, not a mount.
    elsewhere = make_deployment(path=str(tmp_path / "not-here"))
    missing = container_request(make_run(), elsewhere, RUN_ENV, DockerFlowRunner())
    assert missing["HostConfig"]["Binds"] == []
    assert "WorkingDir" not in missing


def test_container_name_is_readable_and_unique_per_claim() -> None:
    assert container_name(make_run(), RUN_ENV) == "sluice-brave-otter-0b5c1f3e-2"
    odd = make_run(name="  weird/name ünïcode!! ")
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]+", container_name(odd, {}))


@pytest.mark.parametrize(
    ("policy", "present", "pull"),
    [
        ("IF_NOT_PRESENT", False, True),
        ("IF_NOT_PRESENT", True, False),
        ("ALWAYS", True, True),
        ("ALWAYS", False, True),
        ("NEVER", True, False),
        ("NEVER", False, False),
    ],
)
def test_needs_pull(policy: Any, present: bool, pull: bool) -> None:
    assert needs_pull(policy, present) is pull


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("python", ("python", "latest")),
        ("python:3.11-slim", ("python", "3.11-slim")),
        ("localhost:5000/team/app", ("localhost:5000/team/app", "latest")),
        ("localhost:5000/team/app:v2", ("localhost:5000/team/app", "v2")),
        ("app@sha256:abc", ("app", "sha256:abc")),
    ],
)
def test_split_image(image: str, parts: tuple[str, str]) -> None:
    assert split_image(image) == parts


def test_bad_settings_are_refused_early() -> None:
    with pytest.raises(ValueError, match="image_pull_policy"):
        DockerFlowRunner(image_pull_policy="SOMETIMES")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SOURCE:TARGET"):
        DockerFlowRunner(volumes=["/just-a-path"])


def test_demultiplex_keeps_partial_frames() -> None:
    frames = frame(1, b"out\n") + frame(2, b"err\n")
    buffer = bytearray(frames[:10])
    assert demultiplex(buffer) == []
    buffer += frames[10:]
    assert demultiplex(buffer) == [(1, b"out\n"), (2, b"err\n")]
    assert buffer == b""


@pytest.mark.parametrize("host", ["ssh://me@box", "https://box:2376", "npipe:////./pipe/x"])
def test_unsupported_docker_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="not supported"):
        endpoint(host)


def test_docker_host_comes_from_the_environment() -> None:
    assert endpoint(None, {}).path == "/var/run/docker.sock"
    assert endpoint(None, {"DOCKER_HOST": "tcp://box:2375"}).host == "box"
    assert endpoint("unix:///x.sock", {"DOCKER_HOST": "tcp://box"}).path == "/x.sock"


# --- stored infrastructure -------------------------------------------------------------
def test_infrastructure_round_trip() -> None:
    runner = DockerFlowRunner(
        image="acme/flows:2",
        env={"A": "1"},
        volumes=["/data:/data"],
        networks=["backend", "extra"],
        labels={"team": "data"},
        auto_remove=True,
        image_pull_policy="ALWAYS",
        stream_output=False,
        docker_host="tcp://builder:2375",
        mount_code=False,
    )
    infra = runner.to_infrastructure()
    assert infra.type == "docker"
    assert infra.env == {"A": "1"}
    wire = msgspec.json.decode(msgspec.json.encode(infra), type=Infrastructure)
    assert from_infrastructure(wire, SubprocessFlowRunner()) == runner
    assert from_infrastructure(DockerFlowRunner().to_infrastructure(), SubprocessFlowRunner()) == (
        DockerFlowRunner()
    )


def test_stored_options_unknown_keys_are_ignored_and_bad_ones_refused() -> None:
    newer = Infrastructure(type="docker", options={"image": "x", "gpus": "all"})
    assert from_infrastructure(newer, SubprocessFlowRunner()) == DockerFlowRunner(image="x")
    for options in ({"volumes": "not-a-list"}, {"image_pull_policy": "SOMETIMES"}):
        with pytest.raises(StartFailed, match="docker options are invalid"):
            from_infrastructure(Infrastructure(type="docker", options=options), None)  # type: ignore[arg-type]


# --- no engine there ------------------------------------------------------------------
@pytest.mark.anyio
async def test_no_engine_at_the_socket(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/docker.sock"
    runner = DockerFlowRunner(image=IMAGE, docker_host=host)
    with pytest.raises(StartFailed) as caught:
        await runner.start(make_run(), None, RUN_ENV)
    message = str(caught.value)
    assert message.startswith(f"cannot reach the Docker engine at {host}")
    assert "No such file or directory" in message
    assert message.endswith("is Docker running?")


@pytest.mark.anyio
async def test_no_engine_on_the_tcp_port_given_by_docker_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("DOCKER_HOST", host)
    with pytest.raises(StartFailed, match=f"cannot reach the Docker engine at {host}"):
        await DockerFlowRunner(image=IMAGE).start(make_run(), None, RUN_ENV)


@pytest.mark.anyio
async def test_an_unsupported_docker_host_fails_the_start() -> None:
    with pytest.raises(StartFailed, match="not supported"):
        await DockerFlowRunner(docker_host="ssh://me@box").start(make_run(), None, RUN_ENV)


# --- a fake engine (tests/fake_docker.py) -----------------------------------------------
@pytest.fixture
async def docker() -> AsyncIterator[FakeDocker]:
    # A short folder: a unix socket's path must fit in about 100 bytes.
    folder = tempfile.mkdtemp(prefix="sluice-docker-")
    path = os.path.join(folder, "docker.sock")
    fake = FakeDocker(url=f"unix://{path}")
    listener = await anyio.create_unix_listener(path)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, fake.handle)
            yield fake
            tg.cancel_scope.cancel()
    finally:
        await listener.aclose()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.anyio
async def test_a_run_in_the_fake_engine(
    docker: FakeDocker, capsys: pytest.CaptureFixture[str]
) -> None:
    docker.exit_code = 3
    docker.output = [(1, "héllo from the flow\n".encode()), (2, b"a warning\n")]
    runner = DockerFlowRunner(image=IMAGE, docker_host=docker.url, networks=["bridge", "extra"])
    process = await runner.start(make_run(), make_deployment(), RUN_ENV)
    assert await process.wait() == 3
    [container] = docker.containers.values()
    assert process.ident == f"container {container.id[:12]} ({container.name})"
    assert container.name == "sluice-brave-otter-0b5c1f3e-2"
    assert container.body == container_request(make_run(), make_deployment(), RUN_ENV, runner)
    assert docker.calls == [
        f"GET /images/{IMAGE}/json",
        "POST /containers/create",
        "POST /networks/extra/connect",
        f"POST /containers/{container.id}/wait",
        f"POST /containers/{container.id}/start",
        f"GET /containers/{container.id}/logs",
    ]
    captured = capsys.readouterr()
    assert captured.out == "héllo from the flow\n"
    assert captured.err == "a warning\n"


@pytest.mark.anyio
async def test_kill_stops_the_container(docker: FakeDocker) -> None:
    docker.exit_code = None  # runs until stopped
    runner = DockerFlowRunner(image=IMAGE, docker_host=docker.url, stream_output=False)
    process = await runner.start(make_run(), None, RUN_ENV)
    [container] = docker.containers.values()
    async with anyio.create_task_group() as tg:
        tg.start_soon(process.kill, 2.5)
        code = await process.wait()
    assert code == 143
    assert "SIGTERM" in explain_exit(code)
    assert docker.queries[f"POST /containers/{container.id}/stop"] == {"t": "3"}  # rounded up
    await process.kill(1)  # already stopped: harmless


@pytest.mark.anyio
async def test_auto_remove_still_reports_a_quick_exit(docker: FakeDocker) -> None:
    runner = DockerFlowRunner(image=IMAGE, docker_host=docker.url, auto_remove=True)
    process = await runner.start(make_run(), None, RUN_ENV)
    assert await process.wait() == 0  # asked for before the start, so not missed
    assert docker.containers == {}


@pytest.mark.anyio
async def test_pulls_a_missing_image(docker: FakeDocker) -> None:
    docker.pullable.add("acme/flows:2")
    runner = DockerFlowRunner(image="acme/flows:2", docker_host=docker.url)
    process = await runner.start(make_run(), None, RUN_ENV)
    assert await process.wait() == 0
    assert docker.calls[:3] == [
        "GET /images/acme/flows:2/json",
        "POST /images/create",
        "POST /containers/create",
    ]


@pytest.mark.anyio
async def test_pull_policies_against_the_engine(docker: FakeDocker) -> None:
    docker.pullable.add(IMAGE)
    always = DockerFlowRunner(image=IMAGE, docker_host=docker.url, image_pull_policy="ALWAYS")
    await (await always.start(make_run(), None, RUN_ENV)).wait()
    assert "POST /images/create" in docker.calls

    never = DockerFlowRunner(image="absent:1", docker_host=docker.url, image_pull_policy="NEVER")
    with pytest.raises(StartFailed, match=r"'absent:1' is not on the Docker engine .* NEVER"):
        await never.start(make_run(), None, RUN_ENV)


@pytest.mark.anyio
async def test_a_failed_pull_says_why(docker: FakeDocker) -> None:
    runner = DockerFlowRunner(image="nope:1", docker_host=docker.url)
    with pytest.raises(StartFailed, match=r"could not pull image 'nope:1': pull access denied$"):
        await runner.start(make_run(), None, RUN_ENV)
    default = DockerFlowRunner(docker_host=docker.url)
    with pytest.raises(StartFailed, match=f"tag it {re.escape(default_image())}"):
        await default.start(make_run(), None, RUN_ENV)
    assert docker.containers == {}


@pytest.mark.anyio
async def test_a_failed_start_removes_the_container(docker: FakeDocker) -> None:
    runner = DockerFlowRunner(image=IMAGE, docker_host=docker.url, networks=["bridge", "missing"])
    with pytest.raises(
        StartFailed, match="could not connect to network 'missing': network missing not found"
    ):
        await runner.start(make_run(), None, RUN_ENV)
    assert docker.calls[-1].startswith("DELETE /containers/")
    assert docker.containers == {}


@pytest.mark.anyio
async def test_the_engines_refusal_is_the_message(docker: FakeDocker) -> None:
    runner = DockerFlowRunner(image=IMAGE, docker_host=docker.url, stream_output=False)
    docker.exit_code = None
    first = await runner.start(make_run(), None, RUN_ENV)
    with pytest.raises(StartFailed, match=r'Conflict\. The container name "/sluice-brave-otter'):
        await runner.start(make_run(), None, RUN_ENV)  # same run, same claim
    await first.kill(0)
    assert await first.wait() == 143


@pytest.mark.anyio
async def test_losing_the_engine_mid_wait_is_a_lost_exit(docker: FakeDocker) -> None:
    docker.exit_code = None
    runner = DockerFlowRunner(image=IMAGE, docker_host=docker.url, stream_output=False)
    process = await runner.start(make_run(), None, RUN_ENV)
    await process.waiter.aclose()  # type: ignore[attr-defined]  # as if the daemon died
    assert await process.wait() == LOST_EXIT_CODE


@pytest.mark.anyio
async def test_the_runner_starts_docker_deployments(
    docker: FakeDocker, orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    """Through engine.Runner: the stored infrastructure picks this runner, the container
    gets the run's identity, and an exit the engine never reported is explained."""
    docker.exit_code = 3
    flow_runner = DockerFlowRunner(image=IMAGE, docker_host=docker.url, stream_output=False)
    deployment = RunnerDeployment(
        name="d", flow_name=f"f{unique}", entrypoint="x.py:f", path=".", flow_runner=flow_runner
    )
    runner = Runner(settings=settings, name=f"r-{unique}", query_seconds=1.0, kill_grace=1.0)
    await runner.aadd_deployment(deployment)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.astart)
        run = await client.create_flow_run(f"f{unique}/d")
        final = await client.wait_for_flow_run(run.id)
        await runner.astop()
    assert final.state.type is StateType.CRASHED
    assert final.state.message == explain_exit(3)
    [container] = docker.containers.values()
    env = env_of(container.body)
    assert env["SLUICE_FLOW_RUN_ID"] == run.id
    assert env["SLUICE_FLOW_RUN_ATTEMPT"] == "1"
    assert env["SLUICE_NATS_URL"].startswith("nats://host.docker.internal:")
    assert container.body["Labels"]["sluice.flow-run-id"] == run.id


# --- a real engine ----------------------------------------------------------------------
def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.skipif(not _docker_works(), reason="no Docker engine here (docker info failed)")
async def test_a_real_container(capsys: pytest.CaptureFixture[str]) -> None:
    """A stock Python image has no Sluice: ``python -m engine`` exits 1 and says so,
    which proves pull, create, wait, start, output and auto-remove on real Docker."""
    image = os.environ.get("SLUICE_TEST_DOCKER_IMAGE", "python:3.11-slim")
    runner = DockerFlowRunner(image=image, auto_remove=True, mount_code=False)
    run = msgspec.structs.replace(make_run(), id=str(uuid.uuid4()))
    process = await runner.start(run, None, {**RUN_ENV, "SLUICE_FLOW_RUN_ID": run.id})
    with anyio.fail_after(120):
        assert await process.wait() == 1
    assert "No module named engine" in capsys.readouterr().err
