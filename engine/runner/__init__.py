"""Runners: take dispatched flow runs and run each in its own process.

Owns the :class:`Runner` (taking work and claiming it: ``_runner``; what it
serves: ``_serving``; single runs, cancelling and stopping: ``_stopping``;
the blocking methods: ``_facade``; starting and watching a claimed run:
``_supervise``; heartbeats, kill requests and leftovers: ``_upkeep``),
:func:`serve`, every flow runner (subprocess and
universal: ``_subprocess``; standbys: ``_standby_pool``/``_standby``; the fork
server: ``_fork``/``_forkserver``; Docker: ``_docker``), the flow-run
process's program (``_process``, what ``python -m engine`` runs), the
parent-death lifeline and the search for a dead instance's leftovers.

May import: everything below it (the client, ``_stack``, ``_core``, the
public modules). Only ``engine.cli`` and ``services`` import it. The public
paths are :mod:`engine.flow_runners`, :mod:`engine.fork_runner` and
:mod:`engine.docker_runner`; the names here load on first use, so importing a
flow runner's module does not import the Runner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine._lazy import lazy_names

if TYPE_CHECKING:
    from engine.runner._runner import Runner
    from engine.runner._serve import aserve, serve

__all__ = ["Runner", "aserve", "serve"]

_LAZY = {
    "Runner": "engine.runner._runner",
    "serve": "engine.runner._serve",
    "aserve": "engine.runner._serve",
}


__getattr__ = lazy_names(__name__, _LAZY)
