"""Options shared by ``sluice run`` and ``sluice deployment run``, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

from . import _parse

Param = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        metavar="KEY=VALUE",
        help="A parameter; VALUE is JSON if it parses, else a string. Repeatable.",
    ),
]
Params = Annotated[
    str | None, typer.Option("--params", metavar="JSON", help="Parameters as a JSON object.")
]
RunName = Annotated[
    str | None,
    typer.Option("--run-name", metavar="NAME", help="Name the run (default: generated)."),
]
StartIn = Annotated[
    str | None,
    typer.Option("--start-in", metavar="DURATION", help="Start later: 30s, 5m, 2h, 1d."),
]
StartAt = Annotated[
    str | None,
    typer.Option("--start-at", metavar="TIME", help="Start at an ISO 8601 time (no offset: UTC)."),
]
IdempotencyKey = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key", metavar="KEY", help="Repeat with the same key: get the same run."
    ),
]
Tag = Annotated[
    list[str] | None,
    typer.Option("--tag", "-t", metavar="TAG", help="Tag the run. Repeatable."),
]
Watch = Annotated[
    bool,
    typer.Option(
        "--watch",
        "-w",
        help="Follow states and logs until the run ends; exit 0 only if it completed.",
    ),
]


def deployment_ref(
    name: str | None, deployment_id: str | None, *, how: str
) -> tuple[str | None, str | None]:
    """Exactly one of a name and a checked id; ``how`` says how to name one."""
    if (name is None) == (deployment_id is None):
        raise typer.BadParameter(f"name the deployment {how} or give --id ID")
    if deployment_id is not None:
        try:
            return None, _parse.parse_deployment_id(deployment_id)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--id'") from None
    return name, None
