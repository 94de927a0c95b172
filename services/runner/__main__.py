"""``python -m services.runner``: run flow runs of a queue or of chosen deployments."""

from __future__ import annotations

import argparse
import os

from services._main import main, parser
from shared.settings import Settings

from .service import RunnerService


def options() -> argparse.ArgumentParser:
    """The runner's options; each falls back to a ``SLUICE_RUNNER_*`` variable."""
    env = os.environ.get
    p = parser(
        "services.runner",
        "Run flow runs of a queue or of chosen deployments, each in its own process. "
        "Start as many as you like: runners serving the same thing share its work.",
    )
    p.add_argument("--name", default=env("SLUICE_RUNNER_NAME"), help="runner name (no / or %%)")
    p.add_argument(
        "--limit",
        type=int,
        default=int(env("SLUICE_RUNNER_LIMIT", "0")) or None,
        help="most flow runs at once (default 5)",
    )
    p.add_argument(
        "--queue",
        default=env("SLUICE_RUNNER_QUEUE", "default"),
        help="serve every deployment dispatched on this queue ('' for none)",
    )
    p.add_argument(
        "--deployment",
        action="append",
        default=[d for d in env("SLUICE_RUNNER_DEPLOYMENTS", "").split(",") if d],
        help="serve this deployment (FLOW/NAME or id); repeatable",
    )
    p.add_argument(
        "--path",
        default=env("SLUICE_RUNNER_CODE_PATH"),
        help="where the flow code lives on this host (overrides deployments' paths)",
    )
    p.add_argument(
        "--register",
        action="append",
        default=[],
        help="a deployment spec file to register and serve at start; repeatable",
    )
    p.add_argument(
        "--fork",
        action="store_true",
        default=env("SLUICE_RUNNER_FORK", "") not in ("", "0", "false"),
        help="start runs as forks of a warm process with the engine imported (faster)",
    )
    p.add_argument(
        "--standby",
        type=int,
        default=int(env("SLUICE_RUNNER_STANDBY", "-1")),
        metavar="N",
        help="processes kept started ahead, connected and waiting for the next run "
        "(default 1; 2 with --fork; 0: start each when its run comes)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=float(env("SLUICE_RUNNER_DRAIN_SECONDS", "30")),
        metavar="S",
        help="on SIGTERM/SIGINT, let runs in progress finish for up to S seconds before "
        "killing them (default 30; a second signal kills at once)",
    )
    p.add_argument(
        "--install-requirements",
        action="store_true",
        default=env("SLUICE_RUNNER_INSTALL_REQUIREMENTS", "") not in ("", "0", "false"),
        help="run a bundle that declares requirements (requirements.txt or pyproject.toml) "
        "in a virtualenv built for them once, under SLUICE_HOME/envs",
    )
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    return options().parse_args(argv)


def service(settings: Settings, args: argparse.Namespace) -> RunnerService:
    return RunnerService(
        settings,
        name=args.name,
        limit=args.limit,
        queue=args.queue or None,
        deployments=args.deployment,
        code_path=args.path,
        register=args.register,
        fork=args.fork,
        standby=None if args.standby < 0 else args.standby,
        drain_seconds=args.drain_seconds,
        install_requirements=args.install_requirements,
    )


if __name__ == "__main__":
    main("runner", service, options())
