"""``python -m services.ui``: the web UI, against the stack at SLUICE_NATS_URL."""

from __future__ import annotations

import argparse
import os
import sys

from services._main import run_service
from shared.errors import SluiceError

from .service import DEFAULT_HOST, DEFAULT_PORT, UIService


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m services.ui", description=__doc__)
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
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    try:
        run_service("ui", lambda settings: UIService(settings, host=args.host, port=args.port))
    except SluiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(1)
