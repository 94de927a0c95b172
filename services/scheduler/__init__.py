"""Turns schedules into runs and offers due runs to runners (``python -m services.scheduler``)."""

from .service import Scheduler

__all__ = ["Scheduler"]
