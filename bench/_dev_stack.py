"""``python -m bench._dev_stack [--fork] [services.dev options]``: the embedded stack.

Without ``--fork`` this is ``python -m services.dev`` (what ``sluice dev``
runs), built from that module's own option parser and stack factory. Its
``DevStack`` has no switch for the runner's fork-server mode, so with
``--fork`` its runner class is swapped, in this process only, for one built
with ``fork=True``: everything else the stack composes stays as ``DevStack``
has it, with no copy of its start-up to drift.
"""

from __future__ import annotations

import functools
import sys

import services.dev.stack as dev_stack
from services._main import main
from services.dev import __main__ as dev_main
from services.runner import RunnerService
from shared.errors import SluiceError

if __name__ == "__main__":
    options = dev_main.options()
    options.add_argument("--fork", action="store_true", help="the runner forks each run")
    fork = "--fork" in sys.argv[1:]
    if fork:
        dev_stack.RunnerService = functools.partial(RunnerService, fork=True)  # type: ignore[misc]
    try:
        main("sluice dev", dev_main.stack, options)
    except SluiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(1)
