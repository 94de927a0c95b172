"""``python -m services.dev``: the embedded stack (what ``sluice dev`` runs)."""

import sys

from services._main import run_service
from shared.errors import SluiceError

from .stack import DevStack

if __name__ == "__main__":
    try:
        run_service("sluice dev", DevStack)
    except SluiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(1)
