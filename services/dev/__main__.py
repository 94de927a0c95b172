"""``python -m services.dev``: the embedded stack (what ``sluice dev`` runs).

The web UI's port comes from ``--ui-port`` or ``SLUICE_UI_PORT``; ``--no-ui``
(or ``SLUICE_UI_PORT=off``) leaves it out.
"""

import argparse
import os
import sys

from services._main import main, parser
from services.ui import DEFAULT_PORT as UI_DEFAULT_PORT
from shared.errors import SluiceError
from shared.settings import Settings

from .stack import DevStack

OFF = ("off", "none", "no", "false")


def options() -> argparse.ArgumentParser:
    p = parser(
        "services.dev",
        "Start a private nats-server (JetStream under $SLUICE_HOME/nats) and every "
        "service in one process, serving the example deployments and the web UI.",
    )
    p.add_argument(
        "--ui-port",
        type=int,
        default=None,
        help=f"port of the web UI (default {UI_DEFAULT_PORT}, or SLUICE_UI_PORT; 0: any free one)",
    )
    p.add_argument("--no-ui", action="store_true", help="do not start the web UI")
    return p


def ui_port(args: argparse.Namespace) -> tuple[int | None, bool]:
    """The UI's port (None: no UI) and whether it was asked for explicitly."""
    from_env = os.environ.get("SLUICE_UI_PORT", "").strip()
    if args.no_ui or (args.ui_port is None and from_env.lower() in OFF):
        return None, True
    if args.ui_port is not None:
        return args.ui_port, True
    if not from_env:
        return UI_DEFAULT_PORT, False
    try:
        return int(from_env), True
    except ValueError:
        raise SluiceError(
            f"SLUICE_UI_PORT must be a port number or 'off', not {from_env!r}"
        ) from None


def stack(settings: Settings, args: argparse.Namespace) -> DevStack:
    port, explicit = ui_port(args)
    return DevStack(settings, ui_port=port, ui_explicit=explicit)


if __name__ == "__main__":
    try:
        main("sluice dev", stack, options())
    except SluiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(1)
