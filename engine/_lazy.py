"""Names a package exports but imports only when first used.

``import engine`` must stay light (no NATS client, no runner), yet
``from engine import Runner`` must work: a package's ``__getattr__`` built
here imports the module that defines a name the first time it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``where[name]`` and returns its ``name``."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        globals_ = vars(importlib.import_module(package))
        globals_[name] = value  # found directly from now on
        return value

    return __getattr__
