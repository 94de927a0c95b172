"""``python -m services.dev``: the embedded stack (what ``sluice dev`` runs)."""

import sys

from services._main import main, parser
from shared.errors import SluiceError

from .stack import DevStack

if __name__ == "__main__":
    try:
        main(
            "sluice dev",
            lambda settings, _args: DevStack(settings),
            parser(
                "services.dev",
                "Start a private nats-server (JetStream under $SLUICE_HOME/nats) and every "
                "service in one process, serving the example deployments.",
            ),
        )
    except SluiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(1)
