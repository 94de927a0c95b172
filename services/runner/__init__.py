"""The runner process (``python -m services.runner``), around ``engine.runner.Runner``."""

from .service import RunnerService

__all__ = ["RunnerService"]
