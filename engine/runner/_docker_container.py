"""The handle of a started flow-run container (a ``FlowRunProcess``).

Waits for the container's exit code, copies its output to this process's
stdout and stderr while it runs, and stops it with ``docker stop``. It never
raises for a Docker failure: a lost container is reported as
:data:`LOST_EXIT_CODE` and logged, since the runner must still settle the run.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import sys
from dataclasses import dataclass
from typing import TextIO

import anyio

from engine.runner._docker_api import DockerAPI, DockerError, Response, demultiplex

__all__ = ["LOST_EXIT_CODE", "OUTPUT_DRAIN", "Container"]

log = logging.getLogger(__name__)

#: The exit code :meth:`Container.wait` reports when the engine lost track of the
#: container (the code ``docker run`` uses for its own errors).
LOST_EXIT_CODE = 125
#: Seconds to let the output catch up once the container has exited.
OUTPUT_DRAIN = 2.0


@dataclass
class Container:
    """A started container: its exit code, its output, and stopping it.

    ``waiter`` is the response to ``POST /containers/{id}/wait`` sent before
    the container started; its body is the exit status.
    """

    api: DockerAPI
    id: str
    name: str
    waiter: Response
    stream_output: bool
    _code: int | None = None

    @property
    def ident(self) -> str:
        return f"container {self.id[:12]} ({self.name})"

    async def wait(self) -> int:
        """The container's exit code; LOST_EXIT_CODE if the engine lost track of it.

        Cancellation closes the wait request; the container keeps running.
        """
        if self._code is not None:
            return self._code
        copied = anyio.Event()
        async with anyio.create_task_group() as tg:
            if self.stream_output:
                tg.start_soon(self._copy_output, copied)
            code = await self._exit_code()
            if self.stream_output:
                with anyio.move_on_after(OUTPUT_DRAIN):
                    await copied.wait()
            tg.cancel_scope.cancel()
        self._code = code
        return code

    async def _exit_code(self) -> int:
        try:
            async with self.waiter:
                answer = json.loads(await self.waiter.read())
            if error := (answer.get("Error") or {}).get("Message"):
                log.warning("waiting for %s: the Docker engine says %s", self.ident, error)
            return int(answer["StatusCode"])
        except (DockerError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("lost track of %s: %s", self.ident, exc)
            return LOST_EXIT_CODE

    async def _copy_output(self, done: anyio.Event) -> None:
        """Copy the container's stdout and stderr to ours, until it exits."""
        query = {"follow": "1", "stdout": "1", "stderr": "1"}
        outputs: dict[int, tuple[TextIO, codecs.IncrementalDecoder]] = {
            1: (sys.stdout, codecs.getincrementaldecoder("utf-8")(errors="replace")),
            2: (sys.stderr, codecs.getincrementaldecoder("utf-8")(errors="replace")),
        }
        try:
            async with await self.api.open(
                "GET", f"/containers/{self.id}/logs", query=query
            ) as response:
                await response.raise_for_status()
                buffer = bytearray()
                async for chunk in response:
                    buffer += chunk
                    for kind, data in demultiplex(buffer):
                        stream, decoder = outputs.get(kind, outputs[1])
                        stream.write(decoder.decode(data))
                        stream.flush()
        except DockerError as exc:  # output is a courtesy; the exit code is what counts
            log.debug("no output from %s: %s", self.ident, exc.message)
        finally:
            done.set()

    async def kill(self, grace: float) -> None:
        """``docker stop``: SIGTERM, then SIGKILL after ``grace`` seconds (rounded up)."""
        query = {"t": str(max(0, math.ceil(grace)))}
        try:
            await self.api.call("POST", f"/containers/{self.id}/stop", query=query)
        except DockerError as exc:
            if exc.status != 404:  # 404: already gone (auto_remove)
                log.warning("could not stop %s: %s", self.ident, exc.message)
