"""A Runner's runs outside its dispatch loop, and its stop.

Executing one run by id (``aexecute_flow_run``) answers kill requests and
heartbeats while it runs, as a started runner does; cancelling runs in
progress here (``acancel_run``, ``acancel_all``); and stopping: take no new
work, drain (let the runs in progress finish for up to ``drain_seconds``),
then kill what is left and close.

Mixed into :class:`~engine.runner._runner.Runner`; uses its state, declared here.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, cast

import anyio
import anyio.abc

from engine.client import Client
from engine.runner._upkeep import _Active
from shared.errors import Conflict, SluiceError
from shared.models import FlowRun

if TYPE_CHECKING:
    from engine.runner._runner import Runner

log = logging.getLogger("sluice.runner")


class _Stopping:
    name: str
    kill_grace: float
    drain_seconds: float
    pause_on_shutdown: bool
    _client: Client | None
    _served: list[str]
    _active: dict[str, _Active]
    _held: dict[str, int]
    _slots: anyio.CapacityLimiter
    _stop: anyio.Event
    _hurry: anyio.Event
    _idle: anyio.Event
    _started: bool
    _draining: bool
    _shutting_down: bool
    _taking: int

    async def astop(self, now: bool = False) -> None:
        """Ask a started runner to stop: take no new work, drain, then kill
        (see :meth:`astart`). A second call, or ``now=True``, kills at once.
        Raises RuntimeError if the runner is not started."""
        if not self._started:
            raise RuntimeError(f"runner {self.name!r} is not started; start it first")
        if now or self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    async def aexecute_flow_run(self, flow_run_id: str) -> FlowRun:
        """Claim one run, run it in its infrastructure, and return it when its process ends.

        While it runs, this runner answers kill requests for it (a
        cancellation stops the process and the run ends Cancelled) and
        heartbeats, even when :meth:`astart` is not running. Returns the run
        as it ended; if the claim is refused (another runner owns it, or it
        ended), returns it as it is. Raises FlowRunNotFound for an unknown id.
        """
        me = cast("Runner", self)  # a mixin of the Runner only
        async with me._session() as client:
            # Heartbeats and fencing (a started runner's own, or for this run).
            async with (
                me._leased(client, me.settings.request_timeout),
                anyio.create_task_group() as upkeep,
            ):
                if not self._started:  # a started runner already answers kills
                    await upkeep.start(me._serve_kills, client)
                run = await client.read_flow_run(flow_run_id)
                async with self._slots:
                    claimed = await me._claim(client, run.id, run.attempt)
                    if claimed is not None:
                        await me._run(client, *claimed)
                        self._note_idle()
                upkeep.cancel_scope.cancel()
            return await client.read_flow_run(flow_run_id)

    async def acancel_run(self, flow_run_id: str, reason: str | None = None) -> None:
        """Cancel a run in progress here: it goes to Cancelling, its process is
        killed (SIGTERM, ``kill_grace``, SIGKILL) and it ends Cancelled.
        Raises FlowRunNotFound for an unknown id."""
        why = reason or f"cancelled by runner {self.name}"
        async with cast("Runner", self)._session() as client:
            with contextlib.suppress(Conflict):  # it ended meanwhile: nothing to cancel
                await client.cancel_flow_run(flow_run_id, reason=why)
        active = self._active.get(flow_run_id)
        if active is not None:
            await active.process.kill(self.kill_grace)

    async def acancel_all(self) -> None:
        """Cancel every run in progress here (see :meth:`acancel_run`)."""
        async with anyio.create_task_group() as tg:
            for run_id in list(self._active):
                tg.start_soon(self.acancel_run, run_id)

    # --- stopping ---------------------------------------------------------------------
    async def _drain(self) -> None:
        """Wait up to ``drain_seconds`` for the runs in progress, or until hurried."""
        self._draining = True
        self._idle = anyio.Event()
        if not (self._taking or self._held) or self.drain_seconds <= 0:
            return
        log.info(
            "runner %s: stopping; waiting up to %.0f s for %d run(s) in progress",
            self.name,
            self.drain_seconds,
            len(self._held),
        )
        with anyio.move_on_after(self.drain_seconds):
            async with anyio.create_task_group() as tg:

                async def first(event: anyio.Event) -> None:
                    await event.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(first, self._idle)
                tg.start_soon(first, self._hurry)

    def _note_idle(self) -> None:
        """Tell a drain that nothing is in progress any more, if so."""
        if not (self._taking or self._held):
            self._idle.set()

    async def _shutdown(self, runs: anyio.abc.TaskGroup) -> None:
        self._shutting_down = True
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as killers:
                for active in list(self._active.values()):
                    active.stopping = True
                    killers.start_soon(active.process.kill, self.kill_grace)

    async def _close(self) -> None:
        cast("Runner", self)._fence.close()
        client, self._client = self._client, None
        if client is None:
            return
        if self.pause_on_shutdown:
            for deployment_id in self._served:
                with contextlib.suppress(SluiceError):
                    await client.pause_deployment(id=deployment_id)
        await client.__aexit__(None, None, None)
