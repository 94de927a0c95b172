"""Executing one stored flow run in this process: ``python -m engine`` and ``--execute``.

1. **Read** the run (unknown id: nothing is reported).
2. **Claim** it. Given the runner's claim ``attempt``, adopt it: every
   proposal carries it and a stale one is refused (ABORT). Otherwise claim
   the run here (PENDING with this process as runner); a WAIT (the run is
   scheduled later) sleeps and asks again; ABORT/REJECT (someone else owns
   it, or it ended) stops with nothing else reported.
3. **Load** the deployment (``read_deployment(id=run.deployment_id)``) and
   its entrypoint. A run claimed here (``--execute``, not a runner's) gets
   its flow runner's ``env`` in this process's environment while it loads
   and runs, as a runner's process would have it. A user error — no
   deployment or entrypoint, an import that fails, no such attribute, not a
   flow — ends the run FAILED with a message saying what to fix, and counts
   as reported.
4. **Resume**: read what earlier attempts left (:mod:`engine._core.resume`).
5. **Run** the flow with the run's stored parameters through the flow
   engine (validated and coerced as a call's are; bad ones end FAILED),
   logs streamed, the final state proposed with its result.

The outcome's ``exit_code`` is 0 when the run reached a final state that
this process reported (COMPLETED or not), 1 otherwise. If the engine itself
fails after the claim, the run is proposed FAILED with the error (so an
agentless run never stays Running), and the exit code is still 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from engine import states
from engine._core.context import use_runtime
from engine._core.flow_engine import ExistingRun, run_flow_async, run_flow_sync
from engine._core.reporting import FlowRunInfo
from engine._core.start import StartTasks
from engine._stack.entrypoint import load_entrypoint
from engine.exceptions import Abort, EntrypointError
from engine.flows import Flow
from shared.errors import DeploymentNotFound, SluiceError
from shared.messages import Decision
from shared.models import Deployment, FlowRun
from shared.states import State

if TYPE_CHECKING:
    from engine._stack.pipe_reporter import PipeReporter
    from engine._stack.reporter import StackReporter

    #: Either reporter: over NATS (``python -m engine``, ``--execute``) or over a
    #: runner's relay socket (the processes a runner starts).
    ExecReporter = StackReporter | PipeReporter

__all__ = ["EXIT_NOT_REPORTED", "EXIT_REPORTED", "Execution", "execute_flow_run"]

EXIT_REPORTED = 0
EXIT_NOT_REPORTED = 1
#: Shortest sleep after a WAIT, so a zero delay does not spin.
_MIN_WAIT = 0.05
log = logging.getLogger("sluice.engine")


class Execution(msgspec.Struct, frozen=True, eq=False):
    """How executing a run ended: the exit code, the run's last known state, why."""

    exit_code: int
    run_id: str
    state: State | None = None
    message: str | None = None
    value: Any = None


def _info(run: FlowRun) -> FlowRunInfo:
    return FlowRunInfo(
        id=run.id,
        name=run.name,
        flow_name=run.flow_name,
        state=run.state,
        parameters=dict(run.parameters),
        parent_flow_run_id=run.parent_flow_run_id,
    )


def _claim(reporter: ExecReporter, run: FlowRun) -> tuple[bool, State, str | None]:
    """Claim ``run`` here: (accepted, the run's state, the refusal's reason)."""
    while True:
        reply = reporter.propose(run.id, states.Pending(), claim=True)
        if reply.status is Decision.WAIT:
            time.sleep(max(reply.delay_seconds or 0.0, _MIN_WAIT))
            continue
        return reply.status is Decision.ACCEPT, reply.state, reply.reason


def _read_deployment(
    reporter: ExecReporter, run: FlowRun, deployment: Deployment | None
) -> Deployment:
    if run.deployment_id is None:
        raise EntrypointError(
            f"flow run {run.name!r} has no deployment, so there is no entrypoint to load"
        )
    if deployment is None or deployment.id != run.deployment_id:
        try:
            deployment = reporter.read_deployment(run.deployment_id)
        except DeploymentNotFound as exc:
            raise EntrypointError(f"the run's deployment is gone: {exc.message}") from None
    return deployment


def _load_flow(deployment: Deployment) -> Flow[..., Any]:
    if not deployment.entrypoint:
        raise EntrypointError(
            f"deployment {deployment.full_name!r} has no entrypoint; register it with "
            "entrypoint='path/to/file.py:flow' or 'package.module:flow'"
        )
    return load_entrypoint(deployment.entrypoint, deployment.path)


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` over this process's environment for a while, then as it was."""
    before = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _fail(
    reporter: ExecReporter, info: FlowRunInfo, message: str, error: BaseException | None = None
) -> bool:
    """Log ``message`` and propose FAILED with it (keeping ``error``'s traceback);
    True when that was accepted."""
    detail = states.format_traceback(error) if error is not None else None
    reporter.log_line(info.id, logging.ERROR, message, detail)
    reply = reporter.propose(info.id, states.Failed(message=message, error=error))
    info.state = reply.state
    return reply.status is Decision.ACCEPT


def execute_flow_run(
    reporter: ExecReporter,
    run_id: str,
    *,
    attempt: int | None = None,
    run: FlowRun | None = None,
    deployment: Deployment | None = None,
    start: StartTasks | None = None,
) -> Execution:
    """Execute the stored run ``run_id`` here (module docstring); ``reporter`` is open.

    ``start``: run it from those tasks on (``sluice run --execute --start-task``).

    A runner that has just claimed the run may hand over what it read — the
    run as its claim left it, and its deployment — to save this process two
    round trips; without them both are read here.

    Raises FlowRunNotFound for an unknown id and StackUnavailable when the
    stack cannot be reached before anything was reported. Interrupting it
    (KeyboardInterrupt) after the claim proposes FAILED, then re-raises.
    """
    if run is None or run.id != run_id:
        run = reporter.read_flow_run(run_id)
    info = _info(run)
    if attempt is not None:
        reporter.adopt(run.id, attempt)
    else:
        accepted, current, reason = _claim(reporter, run)
        info.state = current
        if not accepted:
            return Execution(EXIT_NOT_REPORTED, run.id, current, f"not executed: {reason}")
    try:
        return _execute_claimed(
            reporter, run, info, deployment, own_env=attempt is None, start=start
        )
    except Abort as exc:
        return Execution(EXIT_NOT_REPORTED, run.id, info.state, f"stopped: {exc}")
    except BaseException as exc:
        if not info.state.is_terminal:
            try:
                _fail(reporter, info, f"the process executing the run failed: {exc!r}", exc)
            except SluiceError as report_error:
                log.error("could not mark flow run %s failed: %s", run.id, report_error)
        if not isinstance(exc, Exception):
            raise
        if isinstance(exc, SluiceError):
            return Execution(EXIT_NOT_REPORTED, run.id, info.state, exc.message)
        raise


def _execute_claimed(
    reporter: ExecReporter,
    run: FlowRun,
    info: FlowRunInfo,
    deployment: Deployment | None,
    *,
    own_env: bool,
    start: StartTasks | None = None,
) -> Execution:
    where = f" (claim attempt {reporter.attempt_of(run.id)})" if reporter.attempt_of(run.id) else ""
    reporter.log_line(run.id, logging.INFO, f"executing flow run {run.name!r}{where}")
    try:
        deployment = _read_deployment(reporter, run, deployment)
    except EntrypointError as exc:
        if _fail(reporter, info, exc.message):
            return Execution(EXIT_REPORTED, run.id, info.state, exc.message)
        return Execution(EXIT_NOT_REPORTED, run.id, info.state, f"not reported: {exc.message}")
    # A runner started this process with the flow runner's environment; a run
    # executed where it was claimed (--execute) gets it here, for its duration.
    env = dict(deployment.infrastructure.env) if own_env else {}
    with _environment(env):
        return _load_and_run(reporter, run, info, deployment, start)


def _load_and_run(
    reporter: ExecReporter,
    run: FlowRun,
    info: FlowRunInfo,
    deployment: Deployment,
    start: StartTasks | None,
) -> Execution:
    try:
        flow = _load_flow(deployment)
    except EntrypointError as exc:
        # A flow module that raised on import: its traceback says where.
        if _fail(reporter, info, exc.message, exc.__cause__ and exc):
            return Execution(EXIT_REPORTED, run.id, info.state, exc.message)
        return Execution(EXIT_NOT_REPORTED, run.id, info.state, f"not reported: {exc.message}")
    # Only a run claimed before can have task results to reuse: a first claim
    # (attempt 1) skips reading the task-run stream.
    first = (reporter.attempt_of(run.id) or 0) == 1
    plan = None if first else reporter.load_plan(run.id)
    if plan is not None:
        reporter.log_line(
            run.id,
            logging.INFO,
            f"resuming: {len(plan.completed)} task result(s) of earlier attempts may be reused"
            + (f"; re-running {', '.join(sorted(plan.rerun))}" if plan.rerun else ""),
        )
    existing = ExistingRun(info, plan)
    with use_runtime(reporter.runtime()):
        if flow.is_async:
            result = asyncio.run(run_flow_async(flow, (), {}, (), existing, start))
        else:
            result = run_flow_sync(flow, (), {}, (), existing, start)
    code = EXIT_REPORTED if result.state.is_terminal else EXIT_NOT_REPORTED
    return Execution(code, run.id, result.state, result.state.message, result.value)
