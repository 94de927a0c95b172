"""``ForkServerFlowRunner``: each flow run forked from a warm server (implemented
in :mod:`engine.runner._fork`)."""

from engine.runner._fork import ForkServerFlowRunner

__all__ = ["ForkServerFlowRunner"]
