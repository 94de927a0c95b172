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
from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec

from engine.runner._fence import LEASE_FILE_ENV
from shared.models import Deployment, FlowRun

if TYPE_CHECKING:
    pass

#: The environment variable naming the relay socket's descriptor (engine._stack.pipe_reporter).
RELAY_FD_ENV = "SLUICE_RELAY_FD"

__all__ = [
    "RELAY_FD_ENV",
    "RUN_VARIABLES",
    "Assignment",
    "assignment_for",
    "encode_assignment",
    "read_stdin_assignment",
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


def read_stdin_assignment() -> tuple[bytes, int | None]:
    """The assignment line on stdin; the relay socket a subprocess flow runner
    passed (its number in SLUICE_RELAY_FD), if any."""
    line = sys.stdin.buffer.readline()
    raw = os.environ.pop(RELAY_FD_ENV, None)
    return line, int(raw) if raw else None


if __name__ == "__main__":
    from engine.runner._process import exit_process
    from engine.runner._standby_run import run_standby

    exit_process(run_standby(read_stdin_assignment))
