"""The ``sluice`` Typer application: its command tree and its entry point.

Commands talk to a running stack only through :class:`engine.client.Client`.
``sluice dev`` starts the stack by replacing this process with
``python -m services.dev``: the engine package never imports ``services``.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib import metadata
from typing import Annotated

import typer

from ._bundles import bundles
from ._deployments import deployments
from ._run import run
from ._runner import runners
from ._runs import flow_runs

__all__ = ["app", "main"]

app = typer.Typer(
    name="sluice",
    help="Sluice: run, watch and manage flow runs and deployments.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("run")(run)
app.add_typer(flow_runs)
app.add_typer(deployments)
app.add_typer(runners)
app.add_typer(bundles)


def version_text() -> str:
    """``sluice <version>`` of the installed distribution (``unknown`` when run from
    a source tree that was never installed)."""
    try:
        return f"sluice {metadata.version('sluice')}"
    except metadata.PackageNotFoundError:
        return "sluice (version unknown: not installed)"


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(version_text() + "\n")
        raise typer.Exit()


@app.callback()
def _options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the client's log messages.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print the version and exit.",
            callback=_show_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)


@app.command()
def dev(
    ui_port: Annotated[
        int | None,
        typer.Option(help="Port of the web UI (default 8480, or SLUICE_UI_PORT; 0: any free one)."),
    ] = None,
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Do not start the web UI.")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on this port (or SLUICE_METRICS_PORT)."),
    ] = None,
) -> None:
    """Start the embedded stack (nats-server, every service, the web UI) until Ctrl-C.

    NATS listens where SLUICE_NATS_URL points (default nats://127.0.0.1:4222);
    data lives under SLUICE_HOME (default ~/.sluice).
    """
    argv = [sys.executable, "-m", "services.dev"]
    if ui_port is not None:
        argv += ["--ui-port", str(ui_port)]
    if no_ui:
        argv.append("--no-ui")
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def main() -> None:
    """The console script: quiet logging (the CLI reports errors itself), then the app."""
    # The client logs every failed connection attempt as a warning; while a
    # command waits for NATS that is noise next to the one error it prints.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    app(prog_name="sluice")
