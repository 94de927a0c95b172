"""``ForkServerFlowRunner``: each run in its own process, forked from a warm server.

Enter it as an async context manager (a :class:`~engine.runner._runner.Runner` does
this for its default flow runner): that starts ``python -m engine.runner._forkserver``
and a reader for its messages, all inside one task group, and leaving it
stops the server. Each ``start`` asks the server to fork a child for the run;
the child executes the run like ``python -m engine`` and the server reports
its exit. Killing works as for a subprocess: the child leads its own process
group.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc

from engine.runner._credentials import flow_process_env
from engine.runner._fence import LEASE_FILE_ENV
from engine.runner._standby import assignment_for, encode_assignment
from engine.runner._subprocess import FlowRunProcess, StartFailed
from shared.models import Deployment, FlowRun, Infrastructure

__all__ = ["ForkServerFlowRunner"]

#: The fork server's default number of spares (see engine.runner._forkserver).
DEFAULT_SPARES = 2


@dataclass
class _Forked:
    pid: int
    server: ForkServerFlowRunner
    #: The runner's end of the child's relay socket (engine.runner._relay).
    channel: socket.socket | None = None

    @property
    def ident(self) -> str:
        return f"pid {self.pid} (forked)"

    async def wait(self) -> int:
        return await self.server._exit_of(self.pid)

    async def kill(self, grace: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        with anyio.move_on_after(grace):
            await self.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        await self.wait()


@dataclass
class ForkServerFlowRunner:
    """A flow runner that forks each run from a process with the engine imported."""

    env: dict[str, str] = field(default_factory=dict)
    spares: int = DEFAULT_SPARES
    """Connected processes kept waiting for the next run (0: fork each run afresh)."""
    type: str = "fork"
    #: Its processes report over a relay socket, not a NATS connection of their own.
    relayed = True
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack, repr=False)
    _stream: anyio.abc.UNIXSocketStream | None = field(default=None, repr=False)
    _process: anyio.abc.Process | None = field(default=None, repr=False)
    _spawned: dict[str, tuple[anyio.Event, dict[str, Any]]] = field(default_factory=dict)
    _exits: dict[int, int] = field(default_factory=dict)
    _exit_events: dict[int, anyio.Event] = field(default_factory=dict)
    _lock: anyio.Lock = field(default_factory=anyio.Lock)
    _counter: int = 0

    async def __aenter__(self) -> Self:
        try:
            folder = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-fork-"))
            path = str(Path(folder) / "fork.sock")
            process = await anyio.open_process(
                [sys.executable, "-m", "engine.runner._forkserver", path, str(self.spares)],
                stdin=None,
                stdout=None,
                stderr=None,
            )
            self._process = process
            self._stack.push_async_callback(self._stop_server, process)
            while not await anyio.Path(path).exists():  # bound once its imports are done
                if process.returncode is not None:
                    raise StartFailed(f"the fork server exited with {process.returncode}")
                await anyio.sleep(0.01)
            self._stream = await anyio.connect_unix(path)
            tg = await self._stack.enter_async_context(anyio.create_task_group())
            self._stack.callback(tg.cancel_scope.cancel)
            tg.start_soon(self._read, self._stream)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)

    async def _stop_server(self, process: anyio.abc.Process) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.aclose()  # the server exits when we hang up
        with anyio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()

    async def _read(self, stream: anyio.abc.UNIXSocketStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                message = json.loads(line)
                if "spawned" in message:
                    event, box = self._spawned[message["spawned"]]
                    box.update(message)
                    event.set()
                elif "exited" in message:
                    pid = int(message["exited"])
                    self._exits[pid] = int(message["code"])
                    self._exit_events.setdefault(pid, anyio.Event()).set()

    async def _exit_of(self, pid: int) -> int:
        await self._exit_events.setdefault(pid, anyio.Event()).wait()
        return self._exits[pid]

    async def start(
        self, run: FlowRun, deployment: Deployment | None, env: Mapping[str, str]
    ) -> FlowRunProcess:
        if self._stream is None:
            raise StartFailed("the fork server is not running (enter the flow runner first)")
        full_env = flow_process_env({**os.environ, **self.env, **dict(env)})
        if deployment is not None:
            full_env.update(deployment.infrastructure.env)
        cwd = deployment.path if deployment and deployment.path else None
        base, assignment = assignment_for(run, deployment, full_env, cwd)
        self._counter += 1
        token = f"t{self._counter}"
        event, box = anyio.Event(), dict[str, Any]()
        self._spawned[token] = (event, box)
        request = {
            "spawn": token,
            "env": base,
            "cwd": cwd,
            "assignment": encode_assignment(assignment).decode(),
            # The server fences the run (the child starts no watchdog thread).
            "lease": assignment.env.get(LEASE_FILE_ENV),
        }
        ours, theirs = socket.socketpair()
        try:
            async with self._lock:
                # The child's end of its relay socket travels with the request.
                await self._stream.send_fds(json.dumps(request).encode() + b"\n", [theirs.fileno()])
            theirs.close()  # the server has its copy; ours would hide the child's hang-up
            await event.wait()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            del self._spawned[token]
        if "error" in box:
            ours.close()
            raise StartFailed(f"the fork server could not fork: {box['error']}")
        return _Forked(pid=int(box["pid"]), server=self, channel=ours)

    def to_infrastructure(self) -> Infrastructure:
        return Infrastructure(type="universal", env=dict(self.env))
