"""The ``python -m engine`` program: execute one stored flow run, then exit.

    SLUICE_FLOW_RUN_ID=<id> [SLUICE_FLOW_RUN_ATTEMPT=<n>] python -m engine
    python -m engine --flow-run-id <id> [--attempt <n>]

``SLUICE_FLOW_RUN_ATTEMPT`` is the claim attempt of the runner that started
the process; without it the process claims the run itself. The connection
comes from the usual ``SLUICE_*`` settings. Exit status: 0 when the run's
final state was reported (Completed or Failed alike), 1 when it was not
(unknown run, stack unreachable, claim refused, stale attempt), 2 for usage
errors. Run log lines are echoed to stderr.

Tracing: the process sets up :mod:`shared.telemetry` from ``OTEL_*``
(service name ``sluice-engine``) and continues the trace whose context its
starter put in ``TRACEPARENT`` / ``TRACESTATE``: one ``execute flow run``
span, with the flow run's span (and its task runs' spans) inside.

Startup stays light: this module imports only ``argparse`` until the
arguments are parsed; the engine, nats and the flow come after.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from engine._stack.execute import Execution

RUN_ID_ENV = "SLUICE_FLOW_RUN_ID"
ATTEMPT_ENV = "SLUICE_FLOW_RUN_ATTEMPT"
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="Execute one Sluice flow run by id and report its states, logs and result.",
    )
    parser.add_argument(
        "--flow-run-id",
        metavar="ID",
        default=os.environ.get(RUN_ID_ENV) or None,
        help=f"the flow run to execute (default: ${RUN_ID_ENV})",
    )
    parser.add_argument(
        "--attempt",
        metavar="N",
        type=int,
        default=None,
        help=f"the runner's claim attempt (default: ${ATTEMPT_ENV}; none: claim it here)",
    )
    return parser


def _attempt(given: int | None) -> int | None:
    if given is not None:
        return given
    raw = os.environ.get(ATTEMPT_ENV)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"error: {ATTEMPT_ENV}={raw!r} is not a number") from None


_echoing = False


def echo_run_logs() -> None:
    """Echo the run's log lines to stderr (the runner may stream them); once
    per process (a fork server does it before it forks)."""
    import logging

    global _echoing
    if _echoing:
        return
    _echoing = True
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    for name in ("sluice.runs", "sluice.engine"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.flow_run_id:
        print(f"error: give --flow-run-id or set {RUN_ID_ENV}", file=sys.stderr)
        return EXIT_USAGE
    attempt = _attempt(args.attempt)
    from engine.runner._fence import watch_lease
    from engine.runner._lifeline import die_with_parent

    die_with_parent()
    watch_lease()  # before any user code: no body outlives its claim
    echo_run_logs()

    from engine._stack.execute import EXIT_NOT_REPORTED, execute_flow_run
    from engine._stack.reporter import StackReporter
    from shared import telemetry
    from shared.errors import SluiceError
    from shared.settings import Settings

    telemetry.setup("sluice-engine")
    try:
        with traced_execution(args.flow_run_id), StackReporter(Settings.from_env()) as reporter:
            outcome = execute_flow_run(reporter, args.flow_run_id, attempt=attempt)
    except (SluiceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_REPORTED
    return report_outcome(outcome)


@contextlib.contextmanager
def traced_execution(run_id: str) -> Iterator[None]:
    """The ``execute flow run`` span, child of the context in ``TRACEPARENT`` /
    ``TRACESTATE`` as the environment holds them now; spans are flushed on the
    way out (a runner may end the process soon after it reports). Nothing when
    tracing is off; call ``telemetry.setup`` first."""
    from shared import telemetry

    try:
        with (
            telemetry.activated(telemetry.context_from_env()),
            telemetry.span("execute flow run", attributes={"sluice.flow_run.id": run_id}),
        ):
            yield
    finally:
        telemetry.flush()


def exit_process(code: int) -> NoReturn:
    """End a flow-run process once its run is over, without tearing Python down.

    What a normal exit does that matters still happens — other non-daemon
    threads are waited for, ``atexit`` callbacks run (the user's, and
    logging's flush), output is flushed — but the interpreter's module
    teardown is skipped: tens of milliseconds of CPU per run that nobody
    needs, and the runner's slot is free that much sooner.
    """
    try:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        run_exit_callbacks = getattr(atexit, "_run_exitfuncs", None)
        if run_exit_callbacks is not None:
            run_exit_callbacks()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def report_outcome(outcome: Execution) -> int:
    """Say how the run ended on stderr; return the process's exit code."""
    state = outcome.state.describe() if outcome.state is not None else "unknown"
    note = f": {outcome.message}" if outcome.message else ""
    print(f"flow run {outcome.run_id} ended {state}{note}", file=sys.stderr)
    return outcome.exit_code
