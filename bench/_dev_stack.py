"""``python -m bench._dev_stack [--fork]``: the embedded stack, its runner optionally forking.

Without ``--fork`` this is exactly ``python -m services.dev`` (what ``sluice dev``
runs). ``DevStack`` has no switch for its runner's fork-server mode, so with
``--fork`` its runner class is swapped, for this process only, for one built
with ``fork=True``: everything else the stack composes stays as ``DevStack``
has it, with no copy of its start-up to drift.
"""

from __future__ import annotations

import functools
import sys

import services.dev.stack as dev_stack
from services._main import run_service
from services.runner import RunnerService
from shared.errors import SluiceError

if __name__ == "__main__":
    if "--fork" in sys.argv[1:]:
        dev_stack.RunnerService = functools.partial(RunnerService, fork=True)  # type: ignore[misc]
    try:
        run_service("sluice dev", dev_stack.DevStack)
    except SluiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(1)
