"""Running flows in the CLI's own process: ``sluice run --path/--module`` and ``--execute``.

* :func:`run_local` loads a flow from local code and calls it here. With
  ``SLUICE_NATS_URL`` set the run reports to that stack (which must be
  reachable); without it, it runs purely locally and keeps large results in
  ``$SLUICE_HOME/results``.
* :func:`execute_here` executes a stored run here, as ``python -m engine``
  would (see :mod:`engine._stack.execute`): for ``sluice run --execute`` (an
  agentless run it just created) and ``sluice flow-run retry --execute``.
  The flow runs in this process's main thread with its own executor, so
  ``breakpoint()`` works in a flow and in tasks on the LocalExecutor; a long
  retry delay simply sleeps.

Run log lines are echoed to stderr while the flow runs. The exit status is
0 only when the run COMPLETED, 1 otherwise (and for errors), like
``sluice run --watch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import typer
from rich.markup import escape

from engine._core.context import Runtime, stack_configured, use_runtime
from engine._core.start import StartTasks
from engine._stack.entrypoint import load_target
from engine.client import Client
from engine.exceptions import Abort, EntrypointError
from engine.results import FolderResultStore
from shared.errors import SluiceError
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import State, StateType

from . import _render
from ._invoke import CONNECT_TIMEOUT, EXIT_FAILURE, EXIT_INTERRUPTED, fail

__all__ = ["execute_here", "run_local"]

_SHOWN_RESULT = 2000  # characters of a result's repr printed after a local run


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        fail(SluiceError(str(exc)))


@contextlib.contextmanager
def _echo_run_logs() -> Iterator[None]:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("sluice.runs")
    logger.addHandler(handler)
    # The CLI's root handler (main()'s basicConfig) would print each line again.
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.propagate = propagate
        logger.removeHandler(handler)


def _exit_for(state: State | None) -> None:
    if state is None or state.type is not StateType.COMPLETED:
        raise typer.Exit(EXIT_FAILURE)


def _ended(name: str, run_id: str, state: State) -> None:
    line = _render.out()
    line.print(
        f"Flow run [bold]{escape(name)}[/] ({run_id}) ended ",
        _render.state_text(state),
        sep="",
        soft_wrap=True,
    )
    if state.message:
        line.print(f"  {escape(state.message)}", soft_wrap=True)


def run_local(
    target: str,
    *,
    module: bool,
    parameters: dict[str, Any] | None,
    as_json: bool,
    start_tasks: list[str] | None = None,
    from_run: str | None = None,
) -> None:
    """``sluice run --path/--module``: see the module docstring. Raises typer.Exit.

    ``start_tasks``/``from_run``: run from those tasks on (``flow.run(start_tasks=...)``).
    """
    settings = _settings()
    try:
        flow = load_target(target, module=module)
    except EntrypointError as exc:
        fail(exc)
    with contextlib.ExitStack() as stack:
        if stack_configured():
            from engine._stack.reporter import StackReporter

            try:
                reporter = stack.enter_context(
                    StackReporter(settings, connect_timeout=CONNECT_TIMEOUT)
                )
            except SluiceError as exc:
                fail(exc)
            runtime = reporter.runtime()
        else:
            runtime = Runtime(results=FolderResultStore(settings.home / "results"))
        stack.enter_context(use_runtime(runtime))
        stack.enter_context(_echo_run_logs())
        start: dict[str, Any] = {"start_tasks": start_tasks or [], "from_run": from_run}
        try:
            if flow.is_async:
                result = asyncio.run(flow.run_async(parameters, **start))
            else:
                result = flow.run(parameters, **start)
        except (Abort, SluiceError) as exc:
            fail(exc)
        except ValueError as exc:  # bad start options: nothing ran
            fail(SluiceError(str(exc)))
        except KeyboardInterrupt:
            _render.err().print("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        _render.print_json({"id": result.id, "name": result.run.name, "state": result.state})
    else:
        _ended(result.run.name, result.id, result.state)
        if result.state.type is StateType.COMPLETED and result.value is not None:
            shown = repr(result.value)
            cut = "…" if len(shown) > _SHOWN_RESULT else ""
            _render.out().print(f"  result: {escape(shown[:_SHOWN_RESULT])}{cut}", soft_wrap=True)
    _exit_for(result.state)


def execute_here(
    prepare: Callable[[Client], Any] | None,
    run_id: str | None,
    *,
    as_json: bool,
    announce: Callable[[FlowRun], None] | None = None,
    start: StartTasks | None = None,
) -> None:
    """Execute a stored run in this process and exit with its outcome.

    ``prepare(client)`` (a coroutine function returning a FlowRun) creates
    the run to execute when ``run_id`` is None; ``announce`` prints it.
    Raises typer.Exit.
    """
    from engine._stack.execute import execute_flow_run
    from engine._stack.reporter import StackReporter

    settings = _settings()
    try:
        with StackReporter(settings, connect_timeout=CONNECT_TIMEOUT) as reporter:
            if run_id is None:
                assert prepare is not None
                created: FlowRun = reporter.call(prepare, reporter.client)
                if announce is not None:
                    announce(created)
                run_id = created.id
            with _echo_run_logs():
                outcome = execute_flow_run(reporter, run_id, start=start)
            final: FlowRun = reporter.call(reporter.client.read_flow_run, run_id)
    except SluiceError as exc:
        fail(exc)
    except KeyboardInterrupt:
        _render.err().print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        _render.print_json(final)
    else:
        if outcome.exit_code != 0 and outcome.message:
            _render.err().print(f"[bold red]error:[/] {escape(outcome.message)}", soft_wrap=True)
        _ended(final.name, final.id, final.state)
    _exit_for(final.state)
