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
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import anyio.abc
from nats.aio.msg import Msg

from engine.client import Client
from engine.runner._fence import Fence
from engine.runner._leftovers import containers_left, kill_tree, orphans_of, processes_of
from engine.runner._subprocess import FlowRunner, FlowRunProcess, StartFailed, from_infrastructure
from shared import names
from shared.codec import decode_request, encode, encode_error
from shared.errors import SluiceError, StackUnavailable
from shared.messages import KillReply, KillRun, ProposedState
from shared.models import Deployment, FlowRun
from shared.starting import pause_while_starting
from shared.states import StateType

log = logging.getLogger("sluice.runner")


@dataclass
class _Active:
    process: FlowRunProcess
    attempt: int
    stopping: bool = False
    fenced: bool = False
    """Killed because its lease could lapse (or was declared lost)."""
    reported: bool = False
    """Its relay saw the run's final state accepted for this claim."""


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
    _fence: Fence
    _doomed: set[str]
    _beating: bool = False  # heartbeats (and so fencing) are running
    _kills: anyio.abc.TaskGroup

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

    @contextlib.asynccontextmanager
    async def _leased(self, client: Client, patience: float = math.inf) -> AsyncIterator[None]:
        """Heartbeats and fencing for the duration; entered once the lease is held.

        No claim is taken before our lease is held, and no body outlives it.
        Runs nest: a runner already heartbeating (started) adds nothing.
        Raises StackUnavailable if no heartbeat is answered within ``patience`` s.
        """
        if self._beating:
            yield
            return
        held = False
        async with anyio.create_task_group() as tg:
            self._kills = tg
            with anyio.move_on_after(patience):
                await tg.start(self._heartbeats, client)
                held = True
            if held:
                tg.start_soon(self._fencing)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
            tg.cancel_scope.cancel()
        if not held:
            raise StackUnavailable(
                f"runner {self.name} got no answer to its heartbeats within {patience:g}s"
            )

    async def _heartbeats(
        self, client: Client, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Renew our lease (and our runs' slot leases); ready once the first renewal is in.

        A heartbeat goes out twice per declared interval, so one slow or lost
        heartbeat does not cost a run its lease. Each acknowledged one moves
        the fencing deadline (:class:`~engine.runner._fence.Fence`) and its
        reply names the runs we hold no longer, whose processes die at once.
        """
        period = self.heartbeat_seconds / 2
        first = anyio.Event()
        self._beating = True
        try:
            # Each heartbeat on its own: one stuck on a paused orchestrator
            # must not hold back the next, which may reach the other one.
            async with anyio.create_task_group() as beats:
                started = False
                while True:
                    beats.start_soon(self._beat, client, first)
                    if started:
                        await anyio.sleep(period)
                    else:  # the stack may be away for long: a stop ends that wait
                        await pause_while_starting(period, until=first)
                    if not started and first.is_set():
                        started = True
                        task_status.started()
        finally:
            self._beating = False

    async def _beat(self, client: Client, first: anyio.Event) -> None:
        sent, runs = anyio.current_time(), dict(self._held)
        try:
            # A reply within the lease still renews it (counted from ``sent``).
            with anyio.fail_after(2 * self.heartbeat_seconds):
                reply = await client.heartbeat(
                    self.name,
                    interval=self.heartbeat_seconds,
                    limit=self.limit,
                    runs=runs,
                    **self._serving(),
                )
        except (SluiceError, TimeoutError) as exc:
            why = exc.message if isinstance(exc, SluiceError) else "no reply in time"
            log.warning("runner %s: heartbeat failed: %s", self.name, why)
            return
        self._fence.renewed(sent, reply.lease_seconds, runs)
        for run_id in reply.lost:
            self._lost(run_id, runs.get(run_id), "the stack declared it lost")
        first.set()

    async def _fencing(self) -> None:
        """Kill the process of every run whose fencing deadline has passed.

        Its process ends itself at the same deadline (its lease file); this is
        the runner's half, for processes that cannot (a container) and for a
        runner that resumes after a pause and must not let a body run on.
        """
        while True:
            now = anyio.current_time()
            nearest = now + 0.25  # also notice runs started meanwhile
            for run_id, active in list(self._active.items()):
                deadline = self._fence.deadline(run_id)
                if now >= deadline:
                    self._lost(run_id, active.attempt, "its lease could not be renewed in time")
                else:
                    nearest = min(nearest, deadline)
            await anyio.sleep(max(nearest - now, 0.01))

    async def _may_claim(self, run_id: str, msg: Msg | None) -> float | None:
        """The time a claim goes out, or None: we claim only under a lease with
        time left, since a claim we could not fence must not be taken."""
        if self._fence.holds():
            return anyio.current_time()
        log.warning("runner %s: not claiming run %s: our lease is not held", self.name, run_id)
        if msg is not None:
            await msg.nak(delay=1.0)
        return None

    def _lost(self, run_id: str, attempt: int | None, why: str) -> None:
        """Kill a held run's process now (SIGKILL): it must not run on unclaimed."""
        active = self._active.get(run_id)
        if active is None or active.attempt != attempt or active.fenced:
            return
        active.fenced = active.stopping = True
        log.error("runner %s: run %s: %s; killing %s", self.name, run_id, why, active.process.ident)
        self._kills.start_soon(active.process.kill, 0.0)

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
        if active is None and self._held.get(req.id) == req.attempt:
            # Claimed, process not started yet: it is killed as soon as it is.
            self._doomed.add(req.id)
            await msg.respond(encode(KillReply(found=True)))
            return
        if active is None or active.attempt != req.attempt:
            await msg.respond(encode(KillReply(found=False)))
            return
        log.info("runner %s: killing run %s (%s)", self.name, req.id, active.process.ident)
        await active.process.kill(req.grace_seconds)
        await msg.respond(encode(KillReply(found=True)))
