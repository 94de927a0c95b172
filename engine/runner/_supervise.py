"""The runner's part after a claim: start the run's infrastructure, see it to its end.

Split from :mod:`engine.runner._runner`, which takes dispatch items and claims runs.
For a run it has claimed, the runner picks the flow runner (the
deployment's infrastructure, or its own default), starts the run's process
with the run's environment, and waits for it. If the process could not be
started, or ended without the engine having reported a final state, the run
is marked Crashed with a message that explains why (the exit code, or the
runner shutting down); a run that was being cancelled ends Cancelled.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import anyio
import msgspec

from engine._stack.bundles import BundleCache
from engine._stack.reporter import until_available
from engine.client import Client
from engine.exceptions import BundleError
from engine.runner._envs import RequirementEnvs, requirements_of
from engine.runner._fence import LEASE_FILE_ENV, Fence
from engine.runner._git import GitSources
from engine.runner._lifeline import lifeline_env
from engine.runner._relay import Relay
from engine.runner._subprocess import (
    FlowRunner,
    FlowRunProcess,
    StartFailed,
    explain_exit,
    from_infrastructure,
)
from engine.runner._upkeep import _Active
from shared import names, telemetry
from shared.codec import encode
from shared.errors import SluiceError, StackUnavailable
from shared.messages import LogRecord, ProposedState
from shared.models import Deployment, FlowRun
from shared.settings import Settings
from shared.states import StateType

log = logging.getLogger("sluice.runner")


async def _run_log(client: Client, run_id: str, message: str) -> None:
    """A line in the run's own log, from its runner."""
    record = LogRecord(
        flow_run_id=run_id,
        timestamp=datetime.now(UTC),
        level=logging.WARNING,
        message=message,
        logger="sluice.runner",
    )
    with contextlib.suppress(Exception):  # a lost notice must not stop the run
        await client.nc.jetstream().publish(names.logs_subject(run_id), encode(record))


#: Seconds a runner keeps trying to report what became of a run it holds
#: while the stack cannot be reached (see ``_Supervise._settling``).
SETTLE_SECONDS = 300.0
#: Seconds the relay of an exited process may take to store its last frames.
RELAY_GRACE = 5.0
#: Processes tried for one claim when each dies before it began the run.
STARTS = 2


class _Supervise:
    """Mixed into :class:`~engine.runner._runner.Runner`; uses its state, declared here."""

    name: str
    settings: Settings
    flow_runner: FlowRunner
    code_path: str | None
    _deployments: dict[str, Deployment]
    _active: dict[str, _Active]
    _held: dict[str, int]
    kill_grace: float
    _shutting_down: bool
    _bundles: BundleCache
    _envs: RequirementEnvs
    _git: GitSources
    install_requirements: bool

    def _init_code(self, install_requirements: bool) -> None:
        """Where this runner unpacks bundles and builds their environments (its home)."""
        self.install_requirements = install_requirements
        self._envs = RequirementEnvs(self.settings.home / "envs")
        self._git = GitSources(self.settings.home / "git")
        self._bundles = BundleCache(
            self.settings.home / "bundles",
            max_bytes=int(self.settings.bundle_cache_mb * 1024 * 1024),
        )

    _fence: Fence
    _doomed: set[str]

    async def _deployment(
        self, client: Client, deployment_id: str | None, claimed: Deployment | None, run_id: str
    ) -> Deployment | None:
        if deployment_id is None:
            return None
        # Afresh for every run — the copy the claim's reply carried, or read now:
        # a re-registered deployment (new entrypoint, environment or
        # infrastructure) applies from its next run on, and the flow-run
        # process is handed this copy instead of reading it again.
        if claimed is not None and claimed.id == deployment_id:
            deployment = claimed
        else:
            deployment = await client.read_deployment(id=deployment_id)
        self._deployments[deployment_id] = deployment
        if deployment.bundle is not None or deployment.source is not None:
            # A bundled or git-sourced deployment runs that code, whatever --path
            # says: it is the code the deployment was registered with.
            try:
                deployment = await self._shipped_code(client, deployment, run_id)
            except BundleError as exc:
                raise StartFailed(exc.message) from None
        elif self.code_path:
            deployment = msgspec.structs.replace(deployment, path=self.code_path)
        return deployment

    async def _shipped_code(
        self, client: Client, deployment: Deployment, run_id: str
    ) -> Deployment:
        """``deployment`` set to run in its unpacked bundle or git tree, and in the
        environment of its requirements when it declares some."""
        if deployment.bundle is not None:
            folder = await self._bundles.fetch(client.nc.jetstream(), deployment.bundle)
        else:
            assert deployment.source is not None
            folder = await self._git.checkout(deployment.source)
        deployment = msgspec.structs.replace(deployment, path=str(folder))
        if requirements_of(folder) is None:
            return deployment
        if not self.install_requirements:
            await _run_log(
                client,
                run_id,
                f"runner {self.name} does not install a flow's requirements (start it with "
                "--install-requirements): this run uses the runner's own interpreter",
            )
            return deployment
        env = await self._envs.environment(folder)
        infra = deployment.infrastructure
        if infra.type not in ("universal", "", "process", "subprocess"):
            return deployment  # a container brings its own environment
        options = {**infra.options, "virtualenv": str(env)}
        return msgspec.structs.replace(
            deployment,
            infrastructure=msgspec.structs.replace(infra, type="process", options=options),
        )

    def _env(self, run_id: str, attempt: int) -> dict[str, str]:
        env = {
            "SLUICE_FLOW_RUN_ID": run_id,
            "SLUICE_FLOW_RUN_ATTEMPT": str(attempt),
            "SLUICE_NATS_URL": self.settings.nats_url,
            "SLUICE_HOME": str(self.settings.home),
            "SLUICE_RUNNER_NAME": self.name,
            # A local child ends with us (engine.runner._lifeline): no run outlives its
            # runner. Container flow runners drop these; the runner stops its containers.
            **lifeline_env(),
            # The process ends itself when we stop renewing this (engine.runner._fence).
            LEASE_FILE_ENV: str(self._fence.lease_file(run_id)),
        }
        # The flow-run process must not inherit a runner's own identity.
        env = {k: v for k, v in env.items() if v} | {
            k: v for k, v in os.environ.items() if k.startswith("SLUICE_NATS_") and k not in env
        }
        return telemetry.env_with_trace(env)  # the run's process joins the run's trace

    async def _run(
        self, client: Client, run: FlowRun, deployment: Deployment | None = None
    ) -> None:
        """Start the infrastructure of ``run`` (just claimed by us, with the
        deployment the claim's reply carried) and see it to its end."""
        run_id, attempt = run.id, run.attempt
        if run_id in self._held:
            return  # already running here (a replayed claim of our own)
        self._held[run_id] = attempt
        try:
            await self._run_held(client, run, deployment)
        finally:
            if self._held.get(run_id) == attempt:
                del self._held[run_id]
                self._fence.forget(run_id)
                self._doomed.discard(run_id)

    async def _run_held(self, client: Client, run: FlowRun, claimed: Deployment | None) -> None:
        with self._bundles.holding(claimed.bundle if claimed else None):
            await self._start_and_watch(client, run, claimed)

    async def _start_and_watch(
        self, client: Client, run: FlowRun, claimed: Deployment | None
    ) -> None:
        run_id, attempt = run.id, run.attempt
        for start in range(1, STARTS + 1):
            try:
                # Reading the deployment and fetching its code wait out a stack
                # outage (a cluster electing leaders) as a run's own reports do:
                # crashing the run for it would fail work the stack could still do.
                deployment = await until_available(
                    lambda: self._deployment(client, run.deployment_id, claimed, run_id),
                    self.settings.outage_grace,
                    lambda exc: log.warning(
                        "runner %s: run %s waits for the stack to start: %s", self.name, run_id, exc
                    ),
                )
                runner = (
                    from_infrastructure(deployment.infrastructure, self.flow_runner)
                    if deployment
                    else self.flow_runner
                )
                process = await runner.start(run, deployment, self._env(run_id, attempt))
            except (StartFailed, SluiceError) as exc:
                message = f"The flow run could not be started: {exc}"
                crash = functools.partial(self._crash, client, run_id, attempt, message)
                await self._settling(run_id, crash)
                return
            active = self._active[run_id] = _Active(process=process, attempt=attempt)
            log.info(
                "runner %s: started run %s (%s) in %s", self.name, run_id, run.name, process.ident
            )
            if run_id in self._doomed:  # cancelled while it was starting
                await process.kill(self.kill_grace)
            try:
                code, began, active.reported = await self._wait(client, run, process)
            except anyio.get_cancelled_exc_class():
                # The runner is going away without a graceful stop: what it started must
                # not outlive it, and a container has no lifeline to end it.
                with anyio.CancelScope(shield=True), anyio.move_on_after(self.kill_grace + 10):
                    await process.kill(self.kill_grace)
                raise
            finally:
                if self._active.get(run_id) is active:
                    del self._active[run_id]
            # A process that ended itself at its fencing deadline (we were paused).
            active.fenced = active.fenced or self._fence.expired(run_id)
            if began or code == 0 or start == STARTS or active.fenced or active.stopping:
                break
            if run_id in self._doomed or self._shutting_down:
                break
            # It died before its first word to us (a standby killed while it
            # waited, say): none of the flow's code ran, so the run is started
            # again in a new process rather than crashed for what never began.
            log.warning(
                "runner %s: run %s: its process %s ended before it began the run (%s); "
                "starting the run in a new one",
                self.name,
                run_id,
                process.ident,
                explain_exit(code),
            )
        with anyio.CancelScope(shield=True):
            await self._settling(run_id, lambda: self._after_exit(client, run_id, active, code))

    async def _wait(
        self, client: Client, run: FlowRun, process: FlowRunProcess
    ) -> tuple[int, bool, bool]:
        """The process's exit code, relaying its frames meanwhile if it reports
        through us (engine.runner._relay) rather than a connection of its own;
        whether it began the run (sent a frame; True when it has no relay); and
        whether its final state was accepted through us."""
        channel = getattr(process, "channel", None)
        if channel is None:
            return await process.wait(), True, False
        relay = Relay(client, run.id, run.attempt, channel, runner=self.name)
        done = anyio.Event()

        async def serve() -> None:
            try:
                await relay.serve()
            finally:
                done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            code = await process.wait()
            # Its frames are all written; a child it left behind may hold the
            # socket open, so end-of-file is waited for a little only.
            with anyio.move_on_after(RELAY_GRACE):
                await done.wait()
            tg.cancel_scope.cancel()
        return code, relay.frames > 0, relay.ended

    async def _settling(self, run_id: str, report: Callable[[], Awaitable[None]]) -> None:
        """``report()``, again while the stack cannot be reached.

        A run this runner claimed is settled by it or by nobody: its owner is
        alive, so the watcher leaves it alone. A report given up at the first
        NATS restart or orchestrator hand-over would leave the run Pending or
        Running for ever. Tries for SETTLE_SECONDS (while stopping, for the
        kill grace only), then logs that the run is left as it is.
        """
        limit = self.kill_grace if self._shutting_down else SETTLE_SECONDS
        pause, warned = 0.2, False
        with anyio.move_on_after(limit):
            while True:
                try:
                    await report()
                    return
                except StackUnavailable as exc:
                    if not warned:
                        warned = True
                        log.warning(
                            "runner %s: cannot report run %s yet (%s); trying again",
                            self.name,
                            run_id,
                            exc.message,
                        )
                await anyio.sleep(pause)
                pause = min(pause * 2, 5.0)
        log.error(
            "runner %s: gave up reporting run %s after %.0f s; it stays in its last state",
            self.name,
            run_id,
            limit,
        )

    async def _after_exit(self, client: Client, run_id: str, active: _Active, code: int) -> None:
        if active.reported:
            return  # its relay saw the run end, for this claim: nothing to read or say
        current = await client.read_flow_run(run_id)
        if current.state.is_terminal or current.attempt != active.attempt:
            return  # the engine reported its end, or the run was claimed again meanwhile
        if current.state.type is StateType.CANCELLING:
            await client.propose_state(
                run_id,
                ProposedState(type=StateType.CANCELLED, message="the flow-run process was stopped"),
            )
            return
        message = explain_exit(code)
        if active.fenced:
            message = (
                f"Crashed: its lease was lost. The runner {self.name} could not renew its "
                f"lease in time, so the run's process was stopped before the lease could "
                f"lapse. {message}"
            )
        elif active.stopping:
            message = f"The runner {self.name} shut down before the run finished. {message}"
        await self._crash(client, run_id, active.attempt, message)

    async def _crash(self, client: Client, run_id: str, attempt: int, message: str) -> None:
        reply = await client.propose_state(
            run_id, ProposedState(type=StateType.CRASHED, message=message), attempt=attempt
        )
        log.warning("runner %s: run %s crashed: %s (%s)", self.name, run_id, message, reply.status)
