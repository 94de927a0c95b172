"""``serve()``: run deployments from the current process until Ctrl-C.

    if __name__ == "__main__":
        serve(etl.to_deployment("nightly", cron="0 2 * * *"), hello.to_deployment("hi"))

It registers the deployments, prints what is served and how to start a run,
and runs a :class:`~engine.runner._runner.Runner` for them. Ctrl-C or SIGTERM stops
taking work, pauses the deployments' schedules (``pause_on_shutdown``) and
stops every flow-run process it started.
"""

from __future__ import annotations

import signal
from typing import Any

import anyio
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from engine.deployments import RunnerDeployment
from engine.runner._runner import Runner

__all__ = ["serve"]


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
    """Serve ``deployments`` from this process until interrupted. Blocks."""
    if not deployments:
        raise ValueError("serve() needs at least one deployment (flow.to_deployment(...))")
    runner = Runner(limit=limit, pause_on_shutdown=pause_on_shutdown, **runner_options)

    async def main() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            for deployment in deployments:
                await runner.add_deployment(deployment)
            if print_starting_message:
                Console().print(_panel(runner, deployments))
            async with anyio.create_task_group() as tg:
                tg.start_soon(runner.start)
                async for _ in signals:
                    break
                await runner.stop()

    anyio.run(main)
