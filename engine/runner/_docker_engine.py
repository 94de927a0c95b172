"""The Docker Engine conversation of :class:`~engine.runner._docker.DockerFlowRunner`.

Everything here goes through the ``docker`` SDK (the ``sluice[docker]``
extra), whose calls block: each runs in a worker thread, never on the event
loop. Owns connecting to the engine the way the Docker CLI would, pulling per
policy, creating and starting a container, the handle of a started one
(:class:`Container`), and stopping what a previous runner instance left.

Docker's errors are translated here, at one boundary: a start raises
:class:`~engine.runner._subprocess.StartFailed` with the engine's reason; a
started container's handle never raises for a Docker failure (a container
the engine lost is reported as :data:`LOST_EXIT_CODE`), since the runner must
still settle the run.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import logging
import math
import os
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import anyio
import docker
import docker.errors
import requests.exceptions
from docker.context import ContextAPI
from docker.models.containers import Container as SDKContainer

from engine.runner._docker import RUN_LABEL, RUNNER_LABEL, needs_pull, split_image
from engine.runner._subprocess import StartFailed

if TYPE_CHECKING:
    from engine.runner._docker import DockerFlowRunner

__all__ = ["LOST_EXIT_CODE", "OUTPUT_DRAIN", "Container", "connect", "start_container"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The exit code :meth:`Container.wait` reports when the engine lost track of the
#: container (the code ``docker run`` uses for its own errors).
LOST_EXIT_CODE = 125
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
#: Seconds to let the output catch up once the container has exited.
OUTPUT_DRAIN = 2.0
#: Seconds one wait request may block a worker thread: how soon a cancelled
#: wait lets its thread go.
WAIT_POLL = 5
#: Seconds the engine may stay unreachable while we wait, before the container
#: counts as lost.
UNREACHABLE_LIMIT = 60.0


async def _blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def describe_host(docker_host: str | None) -> str:
    """Where :func:`connect` will look, for messages."""
    if docker_host:
        return docker_host
    if host := os.environ.get("DOCKER_HOST"):
        return host
    context = os.environ.get("DOCKER_CONTEXT")
    return f"the Docker context {context!r}" if context else "the local Docker socket"


def connect(docker_host: str | None) -> docker.DockerClient:
    """A client for the engine the Docker CLI would talk to (blocking; see the module
    docstring of :mod:`engine.runner._docker`). Raises StartFailed when none answers."""
    environment = dict(os.environ)
    if docker_host:
        environment["DOCKER_HOST"] = docker_host
    kwargs: dict[str, Any] = {}
    where = describe_host(docker_host)
    if not environment.get("DOCKER_HOST"):
        # The CLI's context (DOCKER_CONTEXT, else the current one) when no host is named.
        with contextlib.suppress(docker.errors.DockerException, OSError, ValueError):
            context = ContextAPI.get_context(environment.get("DOCKER_CONTEXT"))
            if context is not None and context.Host and context.name != "default":
                kwargs = {"base_url": context.Host, "tls": context.TLSConfig or False}
                where = f"{context.Host} (the Docker context {context.name!r})"
    base_url = kwargs.get("base_url") or environment.get("DOCKER_HOST") or DEFAULT_SOCKET
    ssh = base_url.startswith("ssh://")  # through the ssh command, as the Docker CLI does
    # Said here, not by the SDK: its unix transport leaks the socket of a failed
    # connect (a stale docker.sock with no daemon behind it refuses every one).
    unix_path = base_url.removeprefix("unix://") if base_url.startswith("unix://") else None
    if unix_path and (reason := _unix_socket_refuses(unix_path)):
        raise StartFailed(
            f"cannot reach the Docker engine at {where}: {base_url}: {reason}; is Docker running?"
        )
    try:
        if kwargs:
            return docker.DockerClient(version="auto", use_ssh_client=ssh, **kwargs)
        return docker.from_env(environment=environment, version="auto", use_ssh_client=ssh)
    except docker.errors.DockerException as exc:
        raise StartFailed(
            f"cannot reach the Docker engine at {where}: {exc}; is Docker running?"
        ) from exc


def _unix_socket_refuses(path: str) -> str | None:
    """Why nothing answers on the unix socket at ``path``, or None if something does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        try:
            probe.connect(path)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


async def start_container(
    runner: DockerFlowRunner, request: dict[str, Any], *, default: bool
) -> Container:
    """Connect, pull per policy, create, connect extra networks, start.

    ``request`` is :func:`~engine.runner._docker.container_request`'s. Raises
    StartFailed; a container created but not started is removed again, even
    when the start is cancelled.
    """
    client = await _blocking(connect, runner.docker_host)
    try:
        await _ensure_image(client, runner, request["image"], default=default)
        created: SDKContainer = await _blocking(client.containers.create, **request)
    except docker.errors.DockerException as exc:
        client.close()
        raise StartFailed(_reason(exc)) from exc
    except BaseException:
        client.close()
        raise
    started = False
    try:
        for network in runner.networks[1:]:
            try:
                found = await _blocking(client.networks.get, network)
                await _blocking(found.connect, created)
            except docker.errors.DockerException as exc:
                raise StartFailed(
                    f"could not connect to network {network!r}: {_reason(exc)}"
                ) from exc
        try:
            await _blocking(created.start)
        except docker.errors.DockerException as exc:
            raise StartFailed(_reason(exc)) from exc
        started = True
    finally:
        if not started:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                with contextlib.suppress(docker.errors.DockerException):
                    await _blocking(created.remove, force=True)
                client.close()
    return Container(client, created, runner.stream_output, runner.auto_remove)


async def _ensure_image(
    client: docker.DockerClient, runner: DockerFlowRunner, image: str, *, default: bool
) -> None:
    try:
        await _blocking(client.images.get, image)
        present = True
    except docker.errors.ImageNotFound:
        present = False
    if not needs_pull(runner.image_pull_policy, present):
        if not present:
            raise StartFailed(
                f"image {image!r} is not on the Docker engine at "
                f"{describe_host(runner.docker_host)} and image_pull_policy is NEVER"
            )
        return
    log.info("pulling image %s", image)
    repository, tag = split_image(image)
    try:
        # The SDK finds registry credentials as `docker pull` does (config.json, helpers).
        await _blocking(client.images.pull, repository, tag=tag)
    except docker.errors.DockerException as exc:
        hint = ""
        if default:
            hint = (
                f"; build an image with Sluice installed and tag it {image} "
                "(docs/docker.md), or give DockerFlowRunner(image=...)"
            )
        raise StartFailed(f"could not pull image {image!r}: {_reason(exc)}{hint}") from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)


@dataclass
class Container:
    """A started container: its exit code, its output, and stopping it."""

    client: docker.DockerClient
    container: SDKContainer
    stream_output: bool
    auto_remove: bool
    _code: int | None = None
    _copiers: list[threading.Thread] = field(default_factory=list, repr=False)
    _streams: list[Any] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.stream_output:
            # Daemon threads: a stream the engine never ends must not keep us alive.
            for target in (sys.stdout, sys.stderr):
                copier = threading.Thread(
                    target=self._copy_output,
                    args=(target,),
                    name=f"output of {self.name}",
                    daemon=True,
                )
                copier.start()
                self._copiers.append(copier)

    @property
    def id(self) -> str:
        return str(self.container.id)

    @property
    def name(self) -> str:
        return str(self.container.name)

    @property
    def ident(self) -> str:
        return f"container {self.id[:12]} ({self.name})"

    async def wait(self) -> int:
        """The container's exit code; LOST_EXIT_CODE if the engine lost track of it.

        With ``auto_remove`` the container is removed once its code is read.
        Cancellation ends the wait within WAIT_POLL seconds; the container keeps running.
        """
        if self._code is not None:
            return self._code
        code = await self._exit_code()
        # The streams end with the container; a bounded join lets them catch up.
        for copier in self._copiers:
            await _blocking(copier.join, OUTPUT_DRAIN)
        for stream in self._streams:
            with contextlib.suppress(Exception):
                stream.close()
        with anyio.CancelScope(shield=True):
            if self.auto_remove:
                await self._remove()
            self._code = code
            await _blocking(self.client.close)
        return code

    async def _exit_code(self) -> int:
        unreachable_since: float | None = None
        while True:
            try:
                answer = await _blocking(self.container.wait, timeout=WAIT_POLL)
            except docker.errors.NotFound:
                log.warning("lost track of %s: the engine no longer has it", self.ident)
                return LOST_EXIT_CODE
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                if _is_timeout(exc):
                    unreachable_since = None
                    continue
                now = anyio.current_time()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > UNREACHABLE_LIMIT:
                    log.warning("lost track of %s: %s", self.ident, exc)
                    return LOST_EXIT_CODE
                await anyio.sleep(1.0)
                continue
            if error := (answer.get("Error") or {}).get("Message"):
                log.warning("waiting for %s: the Docker engine says %s", self.ident, error)
            return int(answer["StatusCode"])

    def _copy_output(self, target: TextIO) -> None:
        """Copy the container's stdout (or stderr) to ours until it exits (a thread)."""
        out = target is sys.stdout
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            stream = self.container.logs(stream=True, follow=True, stdout=out, stderr=not out)
            self._streams.append(stream)
            for chunk in stream:
                target.write(decoder.decode(chunk))
                target.flush()
        except Exception as exc:  # output is a courtesy; the exit code is what counts
            log.debug("no output from %s: %s", self.ident, exc)

    async def _remove(self) -> None:
        try:
            await _blocking(self.container.remove, force=True)
        except docker.errors.NotFound:
            pass
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            log.warning("could not remove %s: %s", self.ident, exc)

    async def kill(self, grace: float) -> None:
        """``docker stop``: SIGTERM, then SIGKILL after ``grace`` seconds (rounded up)."""
        if self._code is not None:
            return  # it has exited, and its client is closed
        try:
            await _blocking(self.container.stop, timeout=max(0, math.ceil(grace)))
        except docker.errors.NotFound:
            pass  # already gone
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            log.warning("could not stop %s: %s", self.ident, exc)


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, requests.exceptions.Timeout):
        return True
    # Over a unix socket a read timeout arrives as a ConnectionError wrapping it.
    return "timed out" in str(exc).lower()


async def stop_leftovers(
    docker_host: str | None, runner_name: str, *, quiet: bool = False
) -> dict[str, list[str]]:
    """Remove (SIGKILL first if running) every container labelled as ``runner_name``'s.

    Returns ``{run id: [container idents]}``. Never raises: an engine that cannot
    be reached is logged, and nothing is found there.
    """

    def sweep() -> dict[str, list[str]]:
        client = connect(docker_host)
        found: dict[str, list[str]] = {}
        try:
            labelled = client.containers.list(
                all=True, filters={"label": f"{RUNNER_LABEL}={runner_name}"}
            )
            for container in labelled:
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
                run_id = container.labels.get(RUN_LABEL, "")
                found.setdefault(run_id, []).append(
                    f"container {str(container.id)[:12]} ({container.name})"
                )
        finally:
            client.close()
        return found

    try:
        return await anyio.to_thread.run_sync(sweep)
    except (
        StartFailed,
        docker.errors.DockerException,
        requests.exceptions.RequestException,
    ) as exc:
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "runner %s: could not look for containers left at %s: %s",
            runner_name,
            describe_host(docker_host),
            exc,
        )
        return {}
