"""``DockerFlowRunner`` without a Docker engine: the container it asks for, its
options, and what a user sees when no engine answers.

The container's life (pull, create, start, output, stop, remove, leftovers) is
tested against a real engine in ``tests/docker/`` (``just test-docker``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
import socket
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import yaml

from engine.runner._docker import (
    DockerFlowRunner,
    container_name,
    container_request,
    default_image,
    needs_pull,
    rewrite_loopback,
    split_image,
)
from engine.runner._subprocess import (
    StartFailed,
    SubprocessFlowRunner,
    from_infrastructure,
)
from services.dev import free_port
from shared.models import Deployment, FlowRun, Infrastructure
from shared.states import State, StateType

IMAGE = "python:3.11-slim"

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
    return dict(request["environment"])


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
    assert request["image"] == "acme/flows:2"
    assert request["command"] == ["python", "-m", "engine"]
    assert request["name"] == "sluice-brave-otter-0b5c1f3e-2"
    assert request["tty"] is False
    assert request["detach"] is True
    assert request["volumes"] == ["/data:/data:ro", "cache:/cache"]
    # Removal is the runner's, after it has read the exit code (no race with the engine).
    assert "auto_remove" not in request
    assert request["network_mode"] == "backend"
    assert request["init"] is True  # SIGTERM from `docker stop` must reach Python
    assert "extra_hosts" not in request
    assert "working_dir" not in request
    assert "mem_limit" not in request and "nano_cpus" not in request


def test_the_default_image_follows_the_installed_version() -> None:
    runner = DockerFlowRunner()
    request = container_request(make_run(), None, RUN_ENV, runner)
    assert request["image"] == default_image() == f"sluice:{metadata.version('sluice')}"
    assert "network_mode" not in request
    assert runner.auto_remove is True


def test_one_default_image_for_compose_the_runner_and_the_docs() -> None:
    repo = Path(__file__).resolve().parents[1]
    compose = yaml.safe_load((repo / "docker-compose.yml").read_text())
    built = {s["image"] for s in compose["services"].values() if "build" in s}
    assert built == {default_image()}
    assert f"-t {default_image()} ." in (repo / "docs" / "docker.md").read_text()
    assert f"-t {default_image()} ." in (repo / "deploy" / "Dockerfile").read_text()


def test_limits_reach_the_container() -> None:
    runner = DockerFlowRunner(mem_limit="512m", cpus=1.5)
    request = container_request(make_run(), None, RUN_ENV, runner)
    assert request["mem_limit"] == "512m"
    assert request["nano_cpus"] == 1_500_000_000


def test_no_lifeline_enters_a_container() -> None:
    """A runner's pid means nothing in the container's pid namespace (issue 16), nor
    a lease file on the runner's host: the runner stops the container itself."""
    env = {**RUN_ENV, "SLUICE_RUNNER_PID": "4242", "SLUICE_RUNNER_PIDNS": "pid:[1]"}
    env["SLUICE_LEASE_FILE"] = "/var/lib/sluice/leases/run"
    runner = DockerFlowRunner(env={"SLUICE_RUNNER_PID": "1"})
    request = container_request(make_run(), None, {**env, "SLUICE_RUNNER_NAME": "r1"}, runner)
    gone = {"SLUICE_RUNNER_PID", "SLUICE_RUNNER_PIDNS", "SLUICE_LEASE_FILE"}
    assert not gone & set(env_of(request))
    assert request["labels"]["sluice.runner-name"] == "r1"


def test_environment_runner_then_deployment_then_run() -> None:
    runner = DockerFlowRunner(env={"A": "runner", "B": "runner", "SLUICE_FLOW_RUN_ID": "nope"})
    deployment = make_deployment(env={"B": "deployment", "C": "deployment"})
    env = env_of(container_request(make_run(), deployment, RUN_ENV, runner))
    assert env == {"A": "runner", "B": "deployment", "C": "deployment", **RUN_ENV}


def test_labels_name_the_run_and_deployment_over_the_users() -> None:
    runner = DockerFlowRunner(labels={"team": "data", "sluice.flow-run-id": "spoofed"})
    labels = container_request(make_run(), make_deployment(), RUN_ENV, runner)["labels"]
    assert labels == {
        "team": "data",
        "sluice.flow-run-id": RUN_ID,
        "sluice.flow-run-name": "brave-otter",
        "sluice.flow-name": "etl",
        "sluice.deployment-id": "dep-1",
        "sluice.deployment-name": "etl/nightly",
    }
    without = container_request(make_run(), None, RUN_ENV, runner)["labels"]
    assert without["sluice.deployment-id"] == "dep-1"  # from the run
    assert "sluice.deployment-name" not in without


def test_a_loopback_nats_url_points_at_the_host_gateway() -> None:
    env = {**RUN_ENV, "SLUICE_NATS_URL": "nats://127.0.0.1:4222"}
    request = container_request(make_run(), None, env, DockerFlowRunner())
    assert env_of(request)["SLUICE_NATS_URL"] == "nats://host.docker.internal:4222"
    assert request["extra_hosts"] == {"host.docker.internal": "host-gateway"}


def test_on_the_host_network_nothing_is_rewritten() -> None:
    env = {**RUN_ENV, "SLUICE_NATS_URL": "nats://localhost:4222"}
    request = container_request(make_run(), None, env, DockerFlowRunner(networks=["host"]))
    assert env_of(request)["SLUICE_NATS_URL"] == "nats://localhost:4222"
    assert request["network_mode"] == "host"
    assert "extra_hosts" not in request


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
    assert request["volumes"] == ["v:/v", f"{tmp_path}:{tmp_path}:ro"]
    assert request["working_dir"] == str(tmp_path)

    off = container_request(make_run(), deployment, RUN_ENV, DockerFlowRunner(mount_code=False))
    assert off["volumes"] == []
    # A folder this host does not have is the image's business, not a mount.
    elsewhere = make_deployment(path=str(tmp_path / "not-here"))
    missing = container_request(make_run(), elsewhere, RUN_ENV, DockerFlowRunner())
    assert missing["volumes"] == []
    assert "working_dir" not in missing


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
    with pytest.raises(ValueError, match="mem_limit"):
        DockerFlowRunner(mem_limit="lots")
    with pytest.raises(ValueError, match="cpus"):
        DockerFlowRunner(cpus=0)


# --- stored infrastructure -------------------------------------------------------------
def test_infrastructure_round_trip() -> None:
    runner = DockerFlowRunner(
        image="acme/flows:2",
        env={"A": "1"},
        volumes=["/data:/data"],
        networks=["backend", "extra"],
        labels={"team": "data"},
        auto_remove=False,
        image_pull_policy="ALWAYS",
        stream_output=False,
        docker_host="tcp://builder:2375",
        mount_code=False,
        mem_limit="1g",
        cpus=0.5,
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
async def test_a_stale_socket_with_no_engine_behind_it(tmp_path: Path) -> None:
    # A docker.sock left by a daemon that stopped: the file is there, connects are
    # refused. The SDK leaks the socket of that connect; we must neither leak nor hang.
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(path))  # bound, never listening: what a dead daemon leaves
    runner = DockerFlowRunner(image=IMAGE, docker_host=f"unix://{path}")
    with pytest.raises(StartFailed) as caught:
        await runner.start(make_run(), None, RUN_ENV)
    gc.collect()  # a leaked socket's ResourceWarning now fails this test
    assert "Connection refused" in str(caught.value)
    assert str(caught.value).endswith("is Docker running?")


@pytest.mark.anyio
async def test_no_engine_on_the_tcp_port_given_by_docker_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("DOCKER_HOST", host)
    with pytest.raises(StartFailed, match=f"cannot reach the Docker engine at {host}"):
        await DockerFlowRunner(image=IMAGE).start(make_run(), None, RUN_ENV)


def test_an_ssh_docker_host_goes_through_the_ssh_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ssh://`` engines are reached with the ``ssh`` command (its config, agent and
    known hosts), as the Docker CLI does; TLS settings come from the environment."""
    from engine.runner import _docker_engine

    seen: dict[str, Any] = {}

    def from_env(**kwargs: Any) -> None:
        seen.update(kwargs)

    monkeypatch.setattr(_docker_engine.docker, "from_env", from_env)
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    _docker_engine.connect("ssh://me@build-box")
    assert seen["use_ssh_client"] is True
    assert seen["environment"]["DOCKER_HOST"] == "ssh://me@build-box"
    assert seen["environment"]["DOCKER_TLS_VERIFY"] == "1"
    _docker_engine.connect("tcp://127.0.0.1:2376")
    assert seen["use_ssh_client"] is False


@pytest.mark.anyio
async def test_the_current_docker_context_names_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No DOCKER_HOST: the CLI's current context (config.json) says where the engine is."""
    host = f"unix://{tmp_path}/elsewhere.sock"
    meta = tmp_path / "contexts" / "meta" / hashlib.sha256(b"elsewhere").hexdigest()
    meta.mkdir(parents=True)
    endpoint = {"Host": host, "SkipTLSVerify": False}
    (meta / "meta.json").write_text(
        json.dumps({"Name": "elsewhere", "Metadata": {}, "Endpoints": {"docker": endpoint}})
    )
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "elsewhere"}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    with pytest.raises(StartFailed, match=f"at {host} \\(the Docker context 'elsewhere'\\)"):
        await DockerFlowRunner(image=IMAGE).start(make_run(), None, RUN_ENV)


def test_without_the_docker_package_the_start_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "engine.runner._docker_engine", None)
    with pytest.raises(StartFailed, match=r"pip install 'sluice\[docker\]'"):
        anyio.run(DockerFlowRunner().start, make_run(), None, RUN_ENV)
