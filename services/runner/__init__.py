"""The runner process (``python -m services.runner``).

Owns: the process around :class:`engine.runner.Runner` — its command line,
settings, the deployments it registers at start, and its shutdown. Taking
work, claiming it and running each run's process is the engine's
(:mod:`engine.runner`), so ``serve()`` in user code behaves the same.
"""

from .service import RunnerService

__all__ = ["RunnerService"]
