"""The runner service: a long-lived :class:`engine.runner.Runner` as a process.

It serves a queue (every deployment whose runs are dispatched there) and/or
chosen deployments, runs each flow run in its own process, and on shutdown
stops taking work, lets the runs in progress finish for up to
``drain_seconds`` (a second signal: not at all), and leaves no process
behind. Flow code is found at each deployment's ``path``, or under
``code_path`` when the code lives elsewhere on this host (a container,
another machine).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack

import anyio

from engine.deployments import load_specs
from engine.runner import Runner
from engine.runner._fork import ForkServerFlowRunner
from engine.runner._runner import DEFAULT_DRAIN_SECONDS
from engine.runner._subprocess import FlowRunner, SubprocessFlowRunner
from services._service import Service
from shared import telemetry
from shared.connection import wait_for_server
from shared.settings import Settings

log = logging.getLogger("sluice.runner")


class RunnerService(Service):
    def __init__(
        self,
        settings: Settings,
        *,
        name: str | None = None,
        limit: int | None = None,
        queue: str | None = "default",
        deployments: Sequence[str] = (),
        code_path: str | None = None,
        pause_on_shutdown: bool = False,
        register: Sequence[str] = (),
        fork: bool = False,
        standby: int | None = None,
        drain_seconds: float | None = None,
        install_requirements: bool = False,
    ) -> None:
        super().__init__()
        # Processes started ahead of their runs (engine.runner._standby): standbys of
        # the subprocess flow runner, or the fork server's spares.
        flow_runner: FlowRunner
        if fork:
            flow_runner = ForkServerFlowRunner()
            if standby is not None:
                flow_runner.spares = standby
        else:
            flow_runner = SubprocessFlowRunner()
            if standby is not None:
                flow_runner.standby = standby
        self.runner = Runner(
            name=name,
            limit=limit,
            queue=queue,
            settings=settings,
            code_path=code_path,
            install_requirements=install_requirements,
            pause_on_shutdown=pause_on_shutdown,
            flow_runner=flow_runner,
            drain_seconds=DEFAULT_DRAIN_SECONDS if drain_seconds is None else drain_seconds,
        )
        self._deployments = list(deployments)
        #: Deployment spec files to register (and serve) at start.
        self._register = list(register)

    async def _start(self, stack: AsyncExitStack) -> None:
        telemetry.serve_as("sluice-runner")  # its own service.name in sluice dev
        # Like every service, wait for NATS (saying so) rather than fail when
        # it is not up yet; the runner's own connection then opens at once.
        await wait_for_server(self.runner.settings, name=f"runner {self.runner.name}")
        for ref in self._deployments:
            await self.runner.aserve_deployment(ref)
        for spec_file in self._register:
            for deployment in load_specs(spec_file):
                await self.runner.aadd_deployment(deployment)
                self._deployments.append(deployment.full_name)
        tg = await stack.enter_async_context(anyio.create_task_group())
        await tg.start(self.runner.astart)
        stack.push_async_callback(self._stop)
        log.info(
            "runner %s serving %s (limit %d)",
            self.runner.name,
            ", ".join(
                ([f"queue {self.runner.queue}"] if self.runner.queue else []) + self._deployments
            ),
            self.runner.limit,
        )

    async def _stop(self) -> None:
        """Leaving: stop taking work and drain (``drain_seconds``) before killing;
        a runner hurried to its end already (see :meth:`hurry`) has nothing to stop."""
        if self.runner.started:
            await self.runner.astop()

    async def hurry(self) -> None:
        """A second stop signal: end the drain, kill the runs in progress now."""
        if self.runner.started:
            await self.runner.astop(now=True)
