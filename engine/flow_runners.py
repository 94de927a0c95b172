"""Flow runners: the infrastructure a flow run's process starts in.

The public home of the flow runners, as ``prefect.flow_runners`` is in the
seeds: ``UniversalFlowRunner`` (environment only), ``SubprocessFlowRunner``
(a local process, the default), ``DockerFlowRunner`` (a container) and
``ForkServerFlowRunner`` (forked from a warm server). They are implemented in
:mod:`engine.runner`; the Docker and fork-server runners load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.runner._subprocess import (
    FlowRunner,
    FlowRunProcess,
    StartFailed,
    SubprocessFlowRunner,
    UniversalFlowRunner,
    explain_exit,
    from_infrastructure,
)

if TYPE_CHECKING:
    from engine.runner._docker import DockerFlowRunner
    from engine.runner._fork import ForkServerFlowRunner

__all__ = [
    "DockerFlowRunner",
    "FlowRunProcess",
    "FlowRunner",
    "ForkServerFlowRunner",
    "StartFailed",
    "SubprocessFlowRunner",
    "UniversalFlowRunner",
    "explain_exit",
    "from_infrastructure",
]

_LAZY = {
    "DockerFlowRunner": "engine.runner._docker",
    "ForkServerFlowRunner": "engine.runner._fork",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine.flow_runners' has no attribute {name!r}")
