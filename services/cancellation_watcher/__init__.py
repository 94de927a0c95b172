"""Cancellations and dead runners (``python -m services.cancellation_watcher``).

Owns: carrying out Cancelling runs (asking the run's runner to kill it, then
finishing the run), and detecting runners that stopped heartbeating, whose
runs it settles. It writes state only through the orchestrator.
"""

from .service import CancellationWatcher

__all__ = ["CancellationWatcher"]
