"""Flow runners: the infrastructure a flow run's process starts in.

A flow runner turns "run this flow run" into a started process that executes
``python -m engine`` with the run's id, and gives back a handle to wait for
it and to kill it (the whole process group: SIGTERM, a grace period, then
SIGKILL). ``UniversalFlowRunner`` carries only settings that apply anywhere
(environment variables); a deployment with a universal runner, or none, gets
the runner's default, :class:`SubprocessFlowRunner`.

``DockerFlowRunner`` (in :mod:`engine.runner._docker`) starts a container instead.

Deployments store a flow runner as ``Infrastructure(type=..., env=..., options=...)``
(see ``shared.models``); :func:`from_infrastructure` turns it back into a runner.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import anyio
import anyio.abc

from engine.runner._credentials import flow_process_env
from engine.runner._standby import RELAY_FD_ENV, assignment_for, encode_assignment
from engine.runner._standby_pool import StandbyPool
from shared.models import Deployment, FlowRun, Infrastructure

__all__ = [
    "FlowRunProcess",
    "FlowRunner",
    "StartFailed",
    "SubprocessFlowRunner",
    "UniversalFlowRunner",
    "explain_exit",
    "from_infrastructure",
]


class StartFailed(Exception):
    """The infrastructure could not be started; the message says why."""


class FlowRunProcess(Protocol):
    @property
    def ident(self) -> str:
        """A human-readable id of what runs the flow (pid, container id)."""
        ...

    async def wait(self) -> int:
        """Wait for the end; return the exit code (negative: killed by that signal)."""
        ...

    async def kill(self, grace: float) -> None:
        """SIGTERM the whole process tree, then SIGKILL after ``grace`` seconds."""
        ...


class FlowRunner(Protocol):
    type: str

    async def start(
        self, run: FlowRun, deployment: Deployment | None, env: Mapping[str, str]
    ) -> FlowRunProcess:
        """Start the run's process. Raises StartFailed when it cannot."""
        ...

    def to_infrastructure(self) -> Infrastructure: ...


_SIGNAL_REASONS = {
    signal.SIGKILL: "was killed (SIGKILL); the usual cause is the kernel's out-of-memory "
    "killer or a manual kill -9",
    signal.SIGTERM: "was terminated (SIGTERM) before it reported a final state",
    signal.SIGINT: "was interrupted (SIGINT)",
    signal.SIGSEGV: "crashed with a segmentation fault (SIGSEGV), likely in native code",
    signal.SIGABRT: "aborted (SIGABRT), likely in native code",
}


def _killed_by(signum: int) -> str:
    try:
        sig = signal.Signals(signum)
    except ValueError:
        return f"was killed by signal {signum}"
    return _SIGNAL_REASONS.get(sig, f"was killed by {sig.name}")


def explain_exit(code: int) -> str:
    """Why a flow-run process ended with ``code``, for a Crashed state's message."""
    if code < 0:
        return f"The flow-run process {_killed_by(-code)} (exit code {code})."
    if code in (137, 143):  # a shell or container reports 128 + signal
        return f"The flow-run process {_killed_by(code - 128)} (exit code {code})."
    if code == 247:
        return (
            "The flow-run process exited with code 247: it was stopped for using too much "
            "memory (a container or cgroup memory limit)."
        )
    if code == 0:
        return "The flow-run process exited with code 0 without reporting a final state."
    return (
        f"The flow-run process exited with code {code} without reporting a final state; "
        "its output (stream_output) or the run's logs may say why."
    )


@dataclass
class _Subprocess:
    process: anyio.abc.Process
    #: The runner's end of the process's relay socket (engine.runner._relay).
    channel: socket.socket | None = None

    @property
    def ident(self) -> str:
        return f"pid {self.process.pid}"

    async def wait(self) -> int:
        return await self.process.wait()

    async def kill(self, grace: float) -> None:
        pgid = self.process.pid  # start_new_session=True: the child leads its group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with anyio.move_on_after(grace):
            await self.process.wait()
        # The leader may be gone while grandchildren live on: SIGKILL the group anyway.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        await self.process.wait()


async def _hand_over(process: anyio.abc.Process, line: bytes) -> bool:
    """Send a process its run on stdin and close it; False if the process is gone."""
    assert process.stdin is not None
    try:
        await process.stdin.send(line)
        await process.stdin.aclose()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return False
    return True


def _alive(channel: socket.socket | None) -> bool:
    """False when the process at the other end of its relay socket has gone
    (its end closed), which shows before its exit is reaped."""
    if channel is None:
        return False
    try:
        return channel.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True  # nothing to read, not closed: it is waiting
    except OSError:
        return False


@dataclass
class UniversalFlowRunner:
    """Settings for any infrastructure; the runner's default decides which."""

    env: dict[str, str] = field(default_factory=dict)
    type: str = "universal"

    async def start(
        self, run: FlowRun, deployment: Deployment | None, env: Mapping[str, str]
    ) -> FlowRunProcess:
        return await SubprocessFlowRunner(env=self.env).start(run, deployment, env)

    def to_infrastructure(self) -> Infrastructure:
        return Infrastructure(type=self.type, env=dict(self.env))


@dataclass
class SubprocessFlowRunner:
    """Run each flow run as a new local process (``python -m engine.runner._standby``).

    ``virtualenv`` or ``condaenv`` picks the interpreter (a virtualenv folder,
    or a conda environment name or prefix); ``stream_output`` lets the
    process write to this process's stdout/stderr instead of discarding it.

    The process gets its run on stdin (:mod:`engine.runner._standby`). While the
    flow runner is entered as an async context manager (a Runner does that
    for its default), it keeps up to ``standby`` processes started ahead —
    imported — and gives each new run to one started like it:
    every run still has a fresh process of its own, without waiting for the
    interpreter to start. ``standby=0`` starts each process when its run comes.
    """

    env: dict[str, str] = field(default_factory=dict)
    condaenv: str | None = None
    virtualenv: str | None = None
    stream_output: bool = True
    standby: int = 1
    type: str = "process"
    _pool: StandbyPool | None = field(default=None, repr=False, compare=False)
    #: The runner's end of each started process's relay socket, by pid.
    _channels: dict[int, socket.socket] = field(default_factory=dict, repr=False, compare=False)

    async def __aenter__(self) -> Self:
        if self.standby > 0:
            pool = StandbyPool(self.standby, forget=self._forget)
            await pool.__aenter__()
            self._pool = pool
        return self

    async def __aexit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.__aexit__(exc_type, exc, tb)

    #: Its processes report over a relay socket, not a NATS connection of their own.
    relayed = True

    def python(self) -> list[str]:
        if self.virtualenv:
            return [str(Path(self.virtualenv) / "bin" / "python")]
        if self.condaenv:
            # conda run keeps the environment's activation scripts honest.
            return ["conda", "run", "--no-capture-output", "-n", self.condaenv, "python"]
        return [sys.executable]

    async def start(
        self, run: FlowRun, deployment: Deployment | None, env: Mapping[str, str]
    ) -> FlowRunProcess:
        full_env = flow_process_env({**os.environ, **self.env, **dict(env)})
        if deployment is not None:
            full_env.update(deployment.infrastructure.env)
        cwd = deployment.path if deployment and deployment.path else None
        base, assignment = assignment_for(run, deployment, full_env, cwd)
        line = encode_assignment(assignment)
        argv = [*self.python(), "-m", "engine.runner._standby"]
        key = (tuple(argv), tuple(sorted(base.items())), cwd)

        async def launch() -> anyio.abc.Process:
            return await self._launch(argv, base, cwd)

        process = self._pool.take(key) if self._pool is not None else None
        if process is not None and not _alive(self._channels.get(process.pid)):
            self._forget(process)
            process = None  # it died waiting, though it is not reaped yet
        if process is not None and not await _hand_over(process, line):
            self._forget(process)
            process = None  # it died waiting: start one for this run
        if process is None:
            process = await launch()
            # A process that dies before reading its run reports through its exit code.
            await _hand_over(process, line)
        if self._pool is not None:
            self._pool.refill(key, launch)
        return _Subprocess(process, self._channels.pop(process.pid, None))

    def _forget(self, process: anyio.abc.Process) -> None:
        """A standby stopped unused: close our end of its relay socket."""
        channel = self._channels.pop(process.pid, None)
        if channel is not None:
            channel.close()

    async def _launch(
        self, argv: list[str], env: dict[str, str], cwd: str | None
    ) -> anyio.abc.Process:
        output = None if self.stream_output else subprocess.DEVNULL
        ours, theirs = socket.socketpair()
        try:
            process = await anyio.open_process(
                argv,
                env={**env, RELAY_FD_ENV: str(theirs.fileno())},
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=output,
                start_new_session=True,  # its own process group, killed as a whole
                pass_fds=(theirs.fileno(),),
            )
        except OSError as exc:
            ours.close()
            raise StartFailed(f"could not start the flow-run process: {exc}") from exc
        finally:
            theirs.close()  # the child has its copy; ours would hide its hang-up
        self._channels[process.pid] = ours
        return process

    def to_infrastructure(self) -> Infrastructure:
        options: dict[str, Any] = {"stream_output": self.stream_output}
        if self.condaenv:
            options["condaenv"] = self.condaenv
        if self.virtualenv:
            options["virtualenv"] = self.virtualenv
        return Infrastructure(type=self.type, env=dict(self.env), options=options)


def from_infrastructure(infra: Infrastructure, default: FlowRunner) -> FlowRunner:
    """The flow runner a deployment asks for; universal (or unknown-empty) → ``default``."""
    if infra.type in ("universal", ""):
        return default
    if infra.type in ("process", "subprocess"):
        return SubprocessFlowRunner(
            env=dict(infra.env),
            condaenv=infra.options.get("condaenv"),
            virtualenv=infra.options.get("virtualenv"),
            stream_output=bool(infra.options.get("stream_output", True)),
        )
    if infra.type == "docker":
        # Imported here: only deployments that ask for Docker load its client.
        from engine.runner._docker import DockerFlowRunner

        return DockerFlowRunner.from_infrastructure(infra)
    raise StartFailed(f"this runner cannot start {infra.type!r} infrastructure")
