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
    p.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password (prompted, or from stdin) and print its hash for SLUICE_UI_USERS",
    )
    return p


def _hash_password() -> None:
    import getpass

    from ._auth import hash_password

    password = getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline()
    password = password.rstrip("\n")
    if not password:
        print("error: an empty password", file=sys.stderr)
        sys.exit(2)
    print(hash_password(password))


if __name__ == "__main__":
    if "--hash-password" in sys.argv[1:]:
        _hash_password()
        sys.exit(0)
    try:
        main(
            "ui",
            lambda settings, args: UIService(settings, host=args.host, port=args.port),
            options(),
        )
    except SluiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(1)
