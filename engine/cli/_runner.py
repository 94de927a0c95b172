"""``sluice runner start``: the runner service, started from the CLI.

The engine never imports ``services``, so, like ``sluice dev``, this replaces
the process with ``python -m services.runner`` and hands it every argument
unchanged: the options, their ``SLUICE_RUNNER_*`` variables and ``--help``
are that command's own, so the two cannot drift apart.
"""

from __future__ import annotations

import os
import sys

import typer

__all__ = ["runners"]

runners = typer.Typer(
    name="runner",
    help="Start a runner: it takes flow runs of a queue or of chosen deployments.",
    no_args_is_help=True,
)

MODULE = "services.runner"


@runners.command(
    "start",
    add_help_option=False,  # --help goes to python -m services.runner, which knows the options
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def start(ctx: typer.Context) -> None:
    """Run a runner until Ctrl-C, as python -m services.runner does.

    It takes the same options and SLUICE_RUNNER_* variables (see sluice runner
    start --help): --name, --limit, --queue, --deployment (repeatable), --path,
    --register (repeatable), --fork, --standby N, --check.
    """
    argv = [sys.executable, "-m", MODULE, *ctx.args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
