"""Creating flow runs of deployments, and waiting for them, from plain Python or a flow.

    from engine.runs import create_flow_run, wait_for_flow_run

    @flow
    def nightly():
        child = create_flow_run("etl/daily", parameters={"day": "2030-01-01"})
        done = wait_for_flow_run(child.id, timeout=3600)
        return done.state.type == "COMPLETED"

Both are synchronous and need a stack. Inside a flow that reports to one,
they use that flow's connection, and ``create_flow_run`` makes the new run a
child of the calling flow run (``parent_flow_run_id``) unless told
otherwise. Elsewhere they connect for the call when ``SLUICE_NATS_URL`` is
set (the configured-stack rule of :mod:`engine._core.context`), and raise
StackUnavailable when no stack is configured. The new run is executed by a
runner (or ``sluice run --execute``), never by the caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from engine._core.context import current_flow_run, current_runtime, stack_configured
from shared.errors import StackUnavailable
from shared.models import FlowRun

__all__ = ["create_flow_run", "wait_for_flow_run"]

T = TypeVar("T")
_INHERIT: Any = object()


def _stack_reporter() -> Any:
    """The stack reporter of the enclosing flow run or installed runtime, if any:
    a StackReporter (its connection), or the PipeReporter of a process a runner
    started (a connection with the flow credentials it was given)."""
    reporter = current_runtime().reporter
    from engine._stack.pipe_reporter import PipeReporter
    from engine._stack.reporter import StackReporter

    return reporter if isinstance(reporter, StackReporter | PipeReporter) else None


def _call(what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    """``fn(client)`` on a connection to the stack (see the module docstring)."""
    reporter = _stack_reporter()
    if reporter is not None:
        return reporter.call(fn, reporter.client)
    if not stack_configured():
        raise StackUnavailable(
            f"{what} needs a Sluice stack: set SLUICE_NATS_URL (or call it in a flow that "
            "reports to a stack)"
        )
    from anyio.from_thread import start_blocking_portal

    from engine.client import Client
    from shared.settings import Settings

    with (
        start_blocking_portal(name="sluice-runs") as portal,
        portal.wrap_async_context_manager(Client(Settings.from_env())) as client,
    ):
        return portal.call(fn, client)


def create_flow_run(
    deployment: str | None = None,
    *,
    deployment_id: str | None = None,
    parameters: dict[str, Any] | None = None,
    name: str | None = None,
    scheduled_start_time: datetime | None = None,
    idempotency_key: str | None = None,
    tags: Iterable[str] = (),
    parent_flow_run_id: str | None = _INHERIT,
) -> FlowRun:
    """Create a run of a deployment (``flow/deployment`` or ``deployment_id``) and return it.

    ``parent_flow_run_id`` defaults to the calling flow run when that run
    reports to the stack (None elsewhere); pass None for a run with no parent.
    Raises StackUnavailable, DeploymentNotFound, InvalidParameters (the
    deployment's schema refused ``parameters``).
    """
    if parent_flow_run_id is _INHERIT:
        parent = current_flow_run()
        reporting = parent is not None and _stack_reporter() is not None
        parent_flow_run_id = parent.run.id if reporting and parent is not None else None
    tag_list = list(tags)
    return _call(
        "create_flow_run",
        lambda client: client.create_flow_run(
            deployment,
            deployment_id=deployment_id,
            parameters=parameters,
            name=name,
            scheduled_start_time=scheduled_start_time,
            idempotency_key=idempotency_key,
            tags=tag_list,
            parent_flow_run_id=parent_flow_run_id,
        ),
    )


def wait_for_flow_run(flow_run_id: str, timeout: float | None = None) -> FlowRun:
    """Block until the run reaches a terminal state and return it.

    Raises TimeoutError after ``timeout`` seconds (None: wait as long as it
    takes), FlowRunNotFound, StackUnavailable.
    """

    async def wait(client: Any) -> FlowRun:
        import anyio

        with anyio.fail_after(timeout):
            run: FlowRun = await client.wait_for_flow_run(flow_run_id)
            return run

    try:
        return _call("wait_for_flow_run", wait)
    except TimeoutError:
        raise TimeoutError(f"flow run {flow_run_id} did not finish within {timeout:g} s") from None
