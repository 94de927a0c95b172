"""A standby's run: wait for the assignment, execute it, say how it ended.

Split from :mod:`engine.runner._standby`, which the runner imports for the
assignment's shape, so that everything a run needs can be imported here at
the top: a standby imports this module while it waits, and the fork server
(:mod:`engine.runner._forkserver`) before it forks, so a run's process does
no importing of its own before the flow's code. Even an import of a module
already loaded walks the import system's objects, and in a forked process
each page it touches is a copy-on-write fault.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from engine._stack.execute import EXIT_NOT_REPORTED, Execution, execute_flow_run
from engine._stack.pipe_reporter import PipeReporter
from engine.runner._fence import watch_lease
from engine.runner._lifeline import die_with_parent
from engine.runner._process import echo_run_logs, report_outcome, traced_execution
from engine.runner._standby import Assignment, warm_codecs
from shared import telemetry
from shared.errors import SluiceError

if TYPE_CHECKING:
    from engine._stack.reporter import StackReporter

__all__ = ["run_standby"]


def run_standby(
    read_assignment: Callable[[], tuple[bytes, int | None]], *, self_fence: bool = True
) -> int:
    """Wait for one assignment from ``read_assignment``, execute it; the exit code.

    ``read_assignment`` gives the assignment line and the runner's relay
    socket (a file descriptor): the run reports through it
    (:class:`~engine._stack.pipe_reporter.PipeReporter`) and holds no NATS
    connection. Without one, the process connects with its ``SLUICE_NATS_*``
    settings as ``python -m engine`` does.

    ``self_fence``: watch the run's lease file here (a thread) and end the
    process when it lapses. A forked run's server watches it instead.

    Exit codes are those of ``python -m engine``: 0 when the run's final
    state was reported, 1 when it was not.
    """
    die_with_parent()
    echo_run_logs()
    warm_codecs()
    telemetry.setup("sluice-engine")  # a no-op unless OTEL_TRACES_EXPORTER asks
    line, relay_fd = read_assignment()
    if not line.strip():
        if relay_fd is not None:
            os.close(relay_fd)
        return 0  # the runner stopped before it had work for us
    try:
        assignment = msgspec.json.decode(line, type=Assignment)
    except msgspec.DecodeError as exc:
        print(f"error: unreadable assignment: {exc}", file=sys.stderr)
        return EXIT_NOT_REPORTED
    try:
        outcome = _execute(assignment, relay_fd, self_fence)
    except (SluiceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_REPORTED
    return report_outcome(outcome)


def _enter(assignment: Assignment) -> None:
    os.environ.update(assignment.env)
    if assignment.cwd:
        os.chdir(assignment.cwd)
        folder = str(Path(assignment.cwd))
        if folder not in sys.path:
            sys.path.insert(0, folder)


def _execute(assignment: Assignment, relay_fd: int | None, self_fence: bool) -> Execution:
    _enter(assignment)  # its TRACEPARENT too: the spans below join the run's trace
    if self_fence:
        watch_lease()  # the assignment brought the lease file: fence from here on
    reporter: PipeReporter | StackReporter
    if relay_fd is not None:
        reporter = PipeReporter.from_fd(relay_fd)
    else:
        from engine._stack.reporter import StackReporter  # brings nats: only when asked
        from shared.settings import Settings

        reporter = StackReporter(Settings.from_env())
    with traced_execution(assignment.run_id), reporter:
        return execute_flow_run(
            reporter,
            assignment.run_id,
            attempt=assignment.attempt,
            run=assignment.run,
            deployment=assignment.deployment,
        )
