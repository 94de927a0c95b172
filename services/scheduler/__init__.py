"""Time (``python -m services.scheduler``).

Owns: turning schedules into runs ahead of time (``_materialize``), offering
runs to runners when they fall due and marking them Late (``_dispatch``),
deployment triggers on other runs' events (``_triggers``), and the shared marks
both halves read (``_marks``). It writes state only through the orchestrator,
and never imports user code.
"""

from .service import Scheduler

__all__ = ["Scheduler"]
