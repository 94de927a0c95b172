"""``DockerFlowRunner``: start each flow run in a new Docker container.

The runner asks the Docker engine (``docker_host``, else ``$DOCKER_HOST``,
else ``/var/run/docker.sock``) to pull the image if its policy says so,
create a container running ``python -m engine`` with the run's environment,
connect it to any extra networks, and start it. The handle it returns waits
on the container's exit code and stops it (``docker stop``: SIGTERM, the
grace period, SIGKILL). The HTTP/1.1 wire lives in :mod:`engine.runner._docker_api`.

Choices a user should know about:

* **Image.** The default is ``sluice:<installed Sluice version>``: an image of
  this project that you build and tag yourself. A stock ``python`` image
  would not do, since ``python -m engine`` needs Sluice and its dependencies
  inside the container. Pass ``image=`` for anything else.
* **Code.** With ``mount_code`` (the default), a deployment's folder that
  exists on the runner's host is bind-mounted read-only at the same path and
  used as the working directory, so the entrypoint resolves as it does for a
  subprocess. Turn it off when the image carries the code at that path.
* **Reaching NATS.** Inside a container 127.0.0.1 is the container itself.
  A ``SLUICE_NATS_URL`` naming a loopback host (127.0.0.0/8, ``localhost``,
  ``::1``, ``0.0.0.0``) is rewritten to ``host.docker.internal``, and the
  container gets ``ExtraHosts: host.docker.internal:host-gateway`` (Docker
  20.10+ on Linux; Docker Desktop has the name already). On Linux the host
  is then reached through the bridge address, so nats-server must listen
  there too (for example ``nats://0.0.0.0:4222``). With ``networks=["host"]``
  nothing is rewritten: the container shares the host's network.
* **Signals.** Containers run with Docker's init (``HostConfig.Init``), so
  ``docker stop``'s SIGTERM reaches Python instead of being ignored by PID 1.

Not supported: TLS or SSH to the engine, registry credentials (pull
private images beforehand), and file paths in the environment (NATS
credentials, TLS files, ``SLUICE_HOME``) are passed as they are: mount them
with ``volumes`` at the same path when the run needs them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import anyio
import msgspec

from engine.runner._docker_api import DockerAPI, DockerError, DockerUnreachable, Response
from engine.runner._docker_container import Container
from engine.runner._subprocess import FlowRunProcess, StartFailed
from shared.models import Deployment, FlowRun, Infrastructure

__all__ = [
    "HOST_GATEWAY",
    "DockerFlowRunner",
    "DockerOptions",
    "container_name",
    "container_request",
    "default_image",
    "needs_pull",
    "rewrite_loopback",
    "split_image",
]

log = logging.getLogger(__name__)

PullPolicy = Literal["IF_NOT_PRESENT", "ALWAYS", "NEVER"]
HOST_GATEWAY = "host.docker.internal"
_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


class DockerOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The Docker-specific settings, as stored in ``Infrastructure.options``.

    Unknown keys are ignored, so a deployment written by a newer Sluice still starts.
    """

    image: str | None = None
    volumes: list[str] = []
    networks: list[str] = []
    labels: dict[str, str] = {}
    auto_remove: bool = False
    image_pull_policy: PullPolicy = "IF_NOT_PRESENT"
    stream_output: bool = True
    docker_host: str | None = None
    mount_code: bool = True


@dataclass
class DockerFlowRunner:
    """Run each flow run in a new container of ``image`` (see the module docstring).

    ``image`` defaults to ``sluice:<installed version>``, which you build; the
    pull policy decides whether to pull it first (``IF_NOT_PRESENT``: only
    when the engine does not have it; ``ALWAYS``; ``NEVER``: fail if absent).

    ``volumes`` are Docker bind specs (``/host/path:/container/path[:ro]``
    or ``volume-name:/path``); the first of ``networks`` is the container's
    network mode and the rest are connected before it starts. Raises
    ValueError for an unknown pull policy or a volume without a target.
    """

    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    auto_remove: bool = False
    image_pull_policy: PullPolicy = "IF_NOT_PRESENT"
    stream_output: bool = True
    docker_host: str | None = None
    mount_code: bool = True
    type: str = "docker"

    def __post_init__(self) -> None:
        if self.image_pull_policy not in ("IF_NOT_PRESENT", "ALWAYS", "NEVER"):
            raise ValueError(
                f"image_pull_policy must be IF_NOT_PRESENT, ALWAYS or NEVER, "
                f"not {self.image_pull_policy!r}"
            )
        for volume in self.volumes:
            source, _, target = volume.partition(":")
            if not source or not target:
                raise ValueError(f"a volume is SOURCE:TARGET[:MODE], not {volume!r}")

    @classmethod
    def from_infrastructure(cls, infra: Infrastructure) -> DockerFlowRunner:
        """The runner a stored ``docker`` infrastructure describes. Raises StartFailed."""
        try:
            options = msgspec.convert(infra.options, DockerOptions)
            return cls(env=dict(infra.env), **msgspec.structs.asdict(options))
        except (msgspec.ValidationError, ValueError) as exc:
            raise StartFailed(f"the deployment's docker options are invalid: {exc}") from exc

    def to_infrastructure(self) -> Infrastructure:
        names = DockerOptions.__struct_fields__
        options = DockerOptions(**{name: getattr(self, name) for name in names})
        return Infrastructure(
            type=self.type, env=dict(self.env), options=msgspec.to_builtins(options)
        )

    async def start(
        self, run: FlowRun, deployment: Deployment | None, env: Mapping[str, str]
    ) -> FlowRunProcess:
        """Pull (per policy), create and start the run's container.

        Raises StartFailed with the engine's reason. A container created but
        not started (an error, or cancellation) is removed again.
        """
        try:
            api = DockerAPI(self.docker_host)
        except ValueError as exc:
            raise StartFailed(str(exc)) from exc
        request = container_request(run, deployment, env, self)
        try:
            await self._ensure_image(api, request["Image"])
            return await self._create_and_start(api, request, container_name(run, env))
        except DockerError as exc:
            raise StartFailed(exc.message) from exc

    async def _ensure_image(self, api: DockerAPI, image: str) -> None:
        present = await api.image_exists(image)
        if not needs_pull(self.image_pull_policy, present):
            if not present:
                raise DockerError(
                    f"image {image!r} is not on the Docker engine at {api.url} "
                    "and image_pull_policy is NEVER"
                )
            return
        log.info("pulling image %s from %s", image, api.url)
        try:
            await api.pull(*split_image(image))
        except DockerError as exc:
            if isinstance(exc, DockerUnreachable):
                raise
            hint = ""
            if self.image is None:
                hint = (
                    f"; build an image with Sluice installed and tag it {image}, "
                    "or give DockerFlowRunner(image=...)"
                )
            raise DockerError(f"could not pull image {image!r}: {exc.message}{hint}") from exc

    async def _create_and_start(
        self, api: DockerAPI, request: dict[str, Any], name: str
    ) -> Container:
        created = await api.call("POST", "/containers/create", query={"name": name}, body=request)
        container_id = str(created["Id"])
        waiter: Response | None = None
        try:
            for network in self.networks[1:]:
                try:
                    path = f"/networks/{quote(network, safe='')}/connect"
                    await api.call("POST", path, body={"Container": container_id})
                except DockerError as exc:
                    message = f"could not connect to network {network!r}: {exc.message}"
                    raise DockerError(message, exc.status) from exc
            # Ask for the exit before starting, as `docker run` does: with auto_remove
            # a quick container could otherwise be gone before anyone waits on it.
            waiter = await api.open(
                "POST", f"/containers/{container_id}/wait", query={"condition": "next-exit"}
            )
            await waiter.raise_for_status()
            await api.call("POST", f"/containers/{container_id}/start")
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                if waiter is not None:
                    await waiter.aclose()
                with contextlib.suppress(DockerError):
                    await api.call("DELETE", f"/containers/{container_id}", query={"force": "1"})
            raise
        return Container(api, container_id, name, waiter, self.stream_output)


# --- pure pieces ------------------------------------------------------------------------
def default_image() -> str:
    """``sluice:<installed version>`` (``+`` and other characters a tag forbids become ``-``)."""
    try:
        version = metadata.version("sluice")
    except metadata.PackageNotFoundError:
        version = "latest"
    return f"sluice:{re.sub(r'[^A-Za-z0-9_.-]', '-', version)[:128]}"


def split_image(image: str) -> tuple[str, str]:
    """``(repository, tag or digest)`` for a pull; no tag means ``latest``."""
    if "@" in image:
        repository, _, digest = image.partition("@")
        return repository, digest
    repository, colon, tag = image.rpartition(":")
    if colon and "/" not in tag:  # not the port of a registry such as localhost:5000/img
        return repository, tag
    return image, "latest"


def needs_pull(policy: PullPolicy, present: bool) -> bool:
    """Whether to pull before creating the container."""
    return policy == "ALWAYS" or (policy == "IF_NOT_PRESENT" and not present)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def rewrite_loopback(urls: str) -> str:
    """Each URL of a comma-separated list with a loopback host moved to ``host.docker.internal``."""
    out = []
    for url in urls.split(","):
        parts = urlsplit(url.strip())
        if "://" in url and parts.hostname and _is_loopback(parts.hostname):
            userinfo, at, _ = parts.netloc.rpartition("@")
            port = f":{parts.port}" if parts.port else ""
            parts = parts._replace(netloc=f"{userinfo}{at}{HOST_GATEWAY}{port}")
            url = urlunsplit(parts)
        out.append(url)
    return ",".join(out)


def container_name(run: FlowRun, env: Mapping[str, str]) -> str:
    """``sluice-<run name>-<id prefix>-<attempt>``: readable in ``docker ps``, unique per claim."""
    attempt = env.get("SLUICE_FLOW_RUN_ATTEMPT") or str(run.attempt)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", run.name).strip("-._")[:40] or "run"
    return f"sluice-{slug}-{run.id[:8]}-{attempt}"


def container_request(
    run: FlowRun, deployment: Deployment | None, env: Mapping[str, str], runner: DockerFlowRunner
) -> dict[str, Any]:
    """The body of ``POST /containers/create`` for ``run``.

    Environment: the runner's, then the deployment's, then the run's (``env``,
    which wins). Pure apart from asking whether the deployment's folder exists
    here (``mount_code``).
    """
    environment = {**runner.env}
    if deployment is not None:
        environment.update(deployment.infrastructure.env)
    environment.update(env)
    network_mode = runner.networks[0] if runner.networks else None
    host_config: dict[str, Any] = {
        "Binds": list(runner.volumes),
        "AutoRemove": runner.auto_remove,
        "Init": True,
    }
    nats_url = environment.get("SLUICE_NATS_URL")
    if nats_url and network_mode != "host":
        rewritten = rewrite_loopback(nats_url)
        if rewritten != nats_url:
            environment["SLUICE_NATS_URL"] = rewritten
            host_config["ExtraHosts"] = [f"{HOST_GATEWAY}:host-gateway"]
    if network_mode:
        host_config["NetworkMode"] = network_mode
    request: dict[str, Any] = {
        "Image": runner.image or default_image(),
        "Cmd": ["python", "-m", "engine"],
        "Env": [f"{key}={value}" for key, value in environment.items()],
        "Labels": _labels(run, deployment, runner),
        "Tty": False,
        "OpenStdin": False,
        "AttachStdout": True,
        "AttachStderr": True,
        "HostConfig": host_config,
    }
    code = deployment.path if deployment is not None else None
    if runner.mount_code and code and Path(code).is_dir():
        host_config["Binds"].append(f"{code}:{code}:ro")
        request["WorkingDir"] = code
    return request


def _labels(
    run: FlowRun, deployment: Deployment | None, runner: DockerFlowRunner
) -> dict[str, str]:
    labels = {
        **runner.labels,
        "sluice.flow-run-id": run.id,
        "sluice.flow-run-name": run.name,
        "sluice.flow-name": run.flow_name,
    }
    deployment_id = deployment.id if deployment is not None else run.deployment_id
    if deployment_id:
        labels["sluice.deployment-id"] = deployment_id
    if deployment is not None:
        labels["sluice.deployment-name"] = deployment.full_name
    return labels
