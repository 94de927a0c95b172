"""Finishes cancellations and detects dead runners (``python -m services.cancellation_watcher``)."""

from .service import CancellationWatcher

__all__ = ["CancellationWatcher"]
