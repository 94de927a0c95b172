"""A flow-run process started before its run is known: a standby.

Most of a fresh flow-run process's start-up is spent before it can do
anything for its run: importing the engine. A runner therefore keeps a
*standby* ready — a process that has done that and waits for one
:class:`Assignment` (on its stdin, or with its relay socket from the fork
server). It holds no NATS connection: it reports through the runner's relay
(:mod:`engine._stack.pipe_reporter`) over the socket the runner handed it
(``SLUICE_RELAY_FD`` for a subprocess). It executes that one run exactly like ``python -m engine``
would, then exits: every run still gets a process of its own, and nothing a
run imports or changes reaches another run.

The assignment carries what only the run knows: its id and claim attempt,
the environment variables to add (the run's own, e.g. its id and trace
context), the working folder, and — to save two round trips — the run as
the runner's claim left it and its deployment. Everything the process was
started with (the interpreter, the deployment's environment, the
connection settings) must already be right: the runner keys its standbys by
exactly those.

    python -m engine.runner._standby      # reads one assignment line on stdin

A standby whose pipe closes before an assignment arrives exits quietly with
code 0; it ends with its runner like any flow-run process (engine.runner._lifeline).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from engine.runner._fence import LEASE_FILE_ENV
from shared.models import Deployment, FlowRun

if TYPE_CHECKING:
    from engine._stack.execute import Execution

#: The environment variable naming the relay socket's descriptor (engine._stack.pipe_reporter).
RELAY_FD_ENV = "SLUICE_RELAY_FD"

__all__ = [
    "RELAY_FD_ENV",
    "RUN_VARIABLES",
    "Assignment",
    "assignment_for",
    "encode_assignment",
    "read_stdin_assignment",
    "run_standby",
    "warm_codecs",
]

#: Environment variables that belong to one run, never to a standby's start.
RUN_VARIABLES = frozenset(
    {
        "SLUICE_FLOW_RUN_ID",
        "SLUICE_FLOW_RUN_ATTEMPT",
        LEASE_FILE_ENV,
        "TRACEPARENT",
        "TRACESTATE",
    }
)


class Assignment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One run for a standby process (one JSON line)."""

    run_id: str
    attempt: int | None = None
    env: dict[str, str] = {}
    cwd: str | None = None
    run: FlowRun | None = None
    deployment: Deployment | None = None


def encode_assignment(assignment: Assignment) -> bytes:
    return msgspec.json.encode(assignment) + b"\n"


def assignment_for(
    run: FlowRun, deployment: Deployment | None, env: Mapping[str, str], cwd: str | None
) -> tuple[dict[str, str], Assignment]:
    """Split a run's full process environment into what a standby starts with
    and the run's assignment (its own variables, and what the runner read)."""
    base = {k: v for k, v in env.items() if k not in RUN_VARIABLES}
    own = {k: v for k, v in env.items() if k in RUN_VARIABLES}
    raw_attempt = own.get("SLUICE_FLOW_RUN_ATTEMPT")
    assignment = Assignment(
        run_id=run.id,
        attempt=int(raw_attempt) if raw_attempt else None,
        env=own,
        cwd=cwd,
        run=run,
        deployment=deployment,
    )
    return base, assignment


_warm = False


def warm_codecs() -> None:
    """Build msgspec's codecs for every wire type now, before a run is known.

    msgspec builds a type's decoding plan on first use and keeps it on the
    type (a fork inherits it); for a FlowRun that first use costs a few
    milliseconds, which would otherwise land on the run's start.
    """
    global _warm
    if _warm:
        return  # done here, or in the fork server this process was forked from
    _warm = True
    import shared.messages
    import shared.models

    for module in (shared.models, shared.messages):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, msgspec.Struct):
                msgspec.json.Decoder(value)
    msgspec.json.Decoder(Assignment)


def _enter(assignment: Assignment) -> None:
    os.environ.update(assignment.env)
    if assignment.cwd:
        os.chdir(assignment.cwd)
        folder = str(Path(assignment.cwd))
        if folder not in sys.path:
            sys.path.insert(0, folder)


def run_standby(read_assignment: Callable[[], tuple[bytes, int | None]]) -> int:
    """Wait for one assignment from ``read_assignment``, execute it; the exit code.

    ``read_assignment`` gives the assignment line and the runner's relay
    socket (a file descriptor): the run reports through it
    (:class:`~engine._stack.pipe_reporter.PipeReporter`) and holds no NATS
    connection. Without one, the process connects with its ``SLUICE_NATS_*``
    settings as ``python -m engine`` does.

    Exit codes are those of ``python -m engine``: 0 when the run's final
    state was reported, 1 when it was not.
    """
    # Everything a run needs is imported here, while waiting costs nothing:
    # imported after the assignment, it delayed every run's start by ~5 ms.
    import engine._stack.pipe_reporter
    import engine.runner._fence  # noqa: F401 - warm
    from engine._stack.execute import EXIT_NOT_REPORTED
    from engine.runner._lifeline import die_with_parent
    from engine.runner._process import echo_run_logs, report_outcome
    from shared import telemetry
    from shared.errors import SluiceError

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
        outcome = _execute(assignment, relay_fd)
    except (SluiceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_REPORTED
    return report_outcome(outcome)


def _execute(assignment: Assignment, relay_fd: int | None) -> Execution:
    from engine._stack.execute import execute_flow_run
    from engine.runner._fence import watch_lease
    from engine.runner._process import traced_execution

    _enter(assignment)  # its TRACEPARENT too: the spans below join the run's trace
    watch_lease()  # the assignment brought the lease file: fence from here on
    reporter: Any
    if relay_fd is not None:
        from engine._stack.pipe_reporter import PipeReporter

        reporter = PipeReporter.from_fd(relay_fd)
    else:
        from engine._stack.reporter import StackReporter
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


def read_stdin_assignment() -> tuple[bytes, int | None]:
    """The assignment line on stdin; the relay socket a subprocess flow runner
    passed (its number in SLUICE_RELAY_FD), if any."""
    line = sys.stdin.buffer.readline()
    raw = os.environ.pop(RELAY_FD_ENV, None)
    return line, int(raw) if raw else None


if __name__ == "__main__":
    from engine.runner._process import exit_process

    exit_process(run_standby(read_stdin_assignment))
