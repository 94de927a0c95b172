"""``serve()``: run deployments from the current process until Ctrl-C.

    if __name__ == "__main__":
        serve(etl.to_deployment("nightly", cron="0 2 * * *"), hello.to_deployment("hi"))

It registers the deployments, prints what is served and how to start a run,
and runs a :class:`~engine.runner._runner.Runner` for them. Ctrl-C or SIGTERM stops
taking work and drains: the runs in progress may finish for up to
``drain_seconds`` (a second Ctrl-C ends that at once); then every flow-run
process it started is stopped and the deployments' schedules are paused
(``pause_on_shutdown``). Deployments without a ``queue`` are served only
here (see :mod:`engine.runner._serving`). ``aserve`` is the same for async
code, without the signal handling: cancel its task, or run it until done.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from engine.deployments import RunnerDeployment
from engine.runner._runner import Runner

__all__ = ["aserve", "serve"]


def _panel(runner: Runner, deployments: tuple[RunnerDeployment, ...]) -> Panel:
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("deployment")
    table.add_column("schedules")
    for d in deployments:
        table.add_row(d.full_name, str(len(d.schedules)) if d.schedules else "-")
    first = deployments[0].full_name if deployments else "FLOW/NAME"
    body = Table.grid(padding=(1, 0))
    body.add_row(table)
    body.add_row(f"Start a run of one:\n  [bold]sluice deployment run '{first}'[/bold]")
    body.add_row("Stop with Ctrl-C.")
    return Panel(
        body,
        title=f"Runner [bold]{runner.name}[/bold] serving {len(deployments)} deployment(s)",
        expand=False,
    )


def serve(
    *deployments: RunnerDeployment,
    limit: int | None = None,
    pause_on_shutdown: bool = True,
    print_starting_message: bool = True,
    **runner_options: Any,
) -> None:
    """Serve ``deployments`` from this process until interrupted. Blocks.

    ``runner_options`` go to the :class:`Runner` (``name``, ``drain_seconds`` …).
    Raises RuntimeError when called inside an event loop (use :func:`aserve`).
    """
    runner = _runner(deployments, limit, pause_on_shutdown, runner_options)
    for deployment in deployments:
        runner.add_deployment(deployment)
    if print_starting_message:
        Console().print(_panel(runner, deployments))
    runner.start()


async def aserve(
    *deployments: RunnerDeployment,
    limit: int | None = None,
    pause_on_shutdown: bool = True,
    print_starting_message: bool = True,
    **runner_options: Any,
) -> None:
    """:func:`serve` for async code: returns when the task is cancelled (the
    runner then stops without draining)."""
    runner = _runner(deployments, limit, pause_on_shutdown, runner_options)
    for deployment in deployments:
        await runner.aadd_deployment(deployment)
    if print_starting_message:
        Console().print(_panel(runner, deployments))
    await runner.astart()


def _runner(
    deployments: tuple[RunnerDeployment, ...],
    limit: int | None,
    pause_on_shutdown: bool,
    options: dict[str, Any],
) -> Runner:
    if not deployments:
        raise ValueError("serve() needs at least one deployment (flow.to_deployment(...))")
    return Runner(limit=limit, pause_on_shutdown=pause_on_shutdown, **options)
