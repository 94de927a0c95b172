"""``python -m services.ui``: the web UI, against the stack at SLUICE_NATS_URL."""

from __future__ import annotations

import argparse
import os
import sys

from services._main import main, parser
from shared.errors import SluiceError

from .service import DEFAULT_HOST, DEFAULT_PORT, UIService


def options() -> argparse.ArgumentParser:
    """The UI's options; each falls back to a ``SLUICE_UI_*`` variable."""
    env = os.environ.get
    p = parser(
        "services.ui",
        "Serve the web UI: flow runs, deployments and runners, live, through the same "
        "requests, buckets and streams the CLI uses.",
    )
    p.add_argument(
        "--host",
        default=env("SLUICE_UI_HOST", DEFAULT_HOST),
        help=f"address to listen on (default {DEFAULT_HOST}; 0.0.0.0 in a container)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(env("SLUICE_UI_PORT", str(DEFAULT_PORT))),
        help=f"port to listen on (default {DEFAULT_PORT}; 0 for any free one)",
    )
    return p


if __name__ == "__main__":
    try:
        main(
            "ui",
            lambda settings, args: UIService(settings, host=args.host, port=args.port),
            options(),
        )
    except SluiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(1)
