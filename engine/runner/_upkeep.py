"""The runner's upkeep with the stack: heartbeats, kill requests, leftovers.

Split from :mod:`engine.runner._runner`, which takes and runs work. What lives here
keeps the rest of the stack's picture of a runner true: it is alive and
holds these runs (heartbeats, which renew slot leases); it stops a run's
process when asked (``runner.kill.<name>``); and after a restart it settles
what its previous instance left behind.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import anyio
import anyio.abc
from nats.aio.msg import Msg

from engine.client import Client
from engine.runner._leftovers import containers_left, kill_tree, orphans_of, processes_of
from engine.runner._subprocess import FlowRunner, FlowRunProcess, StartFailed, from_infrastructure
from shared import names
from shared.codec import decode_request, encode, encode_error
from shared.errors import SluiceError
from shared.messages import KillReply, KillRun, ProposedState
from shared.models import Deployment, FlowRun
from shared.states import StateType

log = logging.getLogger("sluice.runner")


@dataclass
class _Active:
    process: FlowRunProcess
    attempt: int
    stopping: bool = False


class _Upkeep:
    """Mixed into :class:`~engine.runner._runner.Runner`; uses its state, declared here."""

    name: str
    limit: int
    kill_grace: float
    heartbeat_seconds: float
    _active: dict[str, _Active]
    _held: dict[str, int]
    flow_runner: FlowRunner
    queue: str | None
    _served: list[str]
    _deployments: dict[str, Deployment]

    def _serving(self) -> dict[str, list[str]]:
        """What the heartbeat says this runner serves (the UI's runners page shows it)."""
        return {
            "queues": [self.queue] if self.queue is not None else [],
            "deployments": [
                self._deployments[i].full_name for i in self._served if i in self._deployments
            ],
        }

    async def _reconcile(self, client: Client) -> None:
        """Settle runs a previous instance of this runner (same name) left claimed.

        Their processes are killed if still around (``engine.runner._leftovers``) and
        the runs reported: Pending ones go back to the queue, the others end
        Crashed. Nothing is left running unknown, and nothing is adopted: a
        new instance cannot take over another process's NATS session.
        """
        try:
            page = await client.list_flow_runs(
                runner=self.name, states=["PENDING", "RUNNING", "PAUSED", "CANCELLING"], limit=1000
            )
        except SluiceError as exc:
            log.warning("runner %s: could not look for runs left behind: %s", self.name, exc)
            return
        # Every container of ours goes, whatever its run's state now: no
        # lifeline ends a container with its runner.
        containers = await containers_left(
            self.name, await self._flow_runners(client, page.flow_runs)
        )
        for run in page.flow_runs:
            if run.id in self._held or run.runner != self.name:
                continue
            killed = processes_of(run.id, self.name)
            for pid in killed:
                kill_tree(pid)
            stopped = containers.get(run.id, [])
            gone = (
                f"killed its process {', '.join(map(str, killed))}"
                if killed
                else f"stopped its {', '.join(stopped)}"
                if stopped
                else "found no process"
            )
            note = f"runner {self.name} restarted and {gone} from its previous instance"
            if run.state.type is StateType.PENDING:
                state = ProposedState(type=StateType.SCHEDULED, message=f"{note}; offered again")
            elif run.state.type is StateType.CANCELLING:
                state = ProposedState(type=StateType.CANCELLED, message=note)
            else:
                state = ProposedState(type=StateType.CRASHED, message=f"Crashed: {note}.")
            with contextlib.suppress(SluiceError):
                await client.propose_state(
                    run.id,
                    state,
                    attempt=run.attempt,
                    release=state.type is StateType.SCHEDULED,
                )
            log.warning("runner %s: run %s: %s", self.name, run.id, note)
        # Processes that ignored the parent-death signal outlive even their
        # run's Crashed mark (the watcher's, when the old runner went silent).
        for pid in orphans_of(self.name):
            kill_tree(pid)
            log.warning(
                "runner %s: killed process %d, left running by a previous instance", self.name, pid
            )

    async def _flow_runners(self, client: Client, runs: list[FlowRun]) -> list[object]:
        """The flow runners whose leftovers to look for: the default, and those of
        the deployments served here or of the runs left behind."""
        deployments = dict(self._deployments)
        for run in runs:
            if run.deployment_id and run.deployment_id not in deployments:
                with contextlib.suppress(SluiceError):
                    deployments[run.deployment_id] = await client.read_deployment(
                        id=run.deployment_id
                    )
        found: list[object] = [self.flow_runner]
        for deployment in deployments.values():
            with contextlib.suppress(StartFailed):
                found.append(from_infrastructure(deployment.infrastructure, self.flow_runner))
        return found

    async def _heartbeats(self, client: Client) -> None:
        """Say we are alive every ``heartbeat_seconds``; this renews our runs' slot leases.

        A runner that cannot renew its lease for two intervals is, for the
        rest of the stack, dead: its runs are being marked Crashed and their
        slots handed on. So it kills its own flow-run processes rather than
        let them run on unknown.
        """
        last_ok = anyio.current_time()
        while True:
            try:
                await client.heartbeat(
                    self.name,
                    interval=self.heartbeat_seconds,
                    limit=self.limit,
                    runs=self._held,
                    **self._serving(),
                )
                last_ok = anyio.current_time()
            except SluiceError as exc:
                log.warning("runner %s: heartbeat failed: %s", self.name, exc.message)
                if anyio.current_time() - last_ok > 2 * self.heartbeat_seconds and self._active:
                    log.error(
                        "runner %s: lease lost; killing %d flow-run process(es)",
                        self.name,
                        len(self._active),
                    )
                    async with anyio.create_task_group() as killers:
                        for active in list(self._active.values()):
                            active.stopping = True
                            killers.start_soon(active.process.kill, self.kill_grace)
            await anyio.sleep(self.heartbeat_seconds)

    async def _serve_kills(
        self, client: Client, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer ``runner.kill.<name>``: stop a run's process tree (SIGTERM, grace, SIGKILL).

        The run then ends Cancelled when the process is gone (see ``_after_exit``).
        """
        sub = await client.nc.subscribe(names.runner_kill_subject(self.name))
        task_status.started()
        try:
            async with anyio.create_task_group() as kills:  # one slow kill must not hold others
                async for msg in sub.messages:
                    kills.start_soon(self._kill_one, msg)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _kill_one(self, msg: Msg) -> None:
        try:
            req = decode_request(msg.data, KillRun)
        except SluiceError as exc:
            await msg.respond(encode_error(exc))
            return
        active = self._active.get(req.id)
        if active is None or active.attempt != req.attempt:
            await msg.respond(encode(KillReply(found=False)))
            return
        log.info("runner %s: killing run %s (%s)", self.name, req.id, active.process.ident)
        await active.process.kill(req.grace_seconds)
        await msg.respond(encode(KillReply(found=True)))
