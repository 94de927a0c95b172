"""Flow runners: the infrastructure a flow run's process starts in.

The public home of the flow runners, as ``prefect.flow_runners`` is in the
seeds: ``UniversalFlowRunner`` (environment only), ``SubprocessFlowRunner``
(a local process, the default), ``DockerFlowRunner`` (a container) and
``ForkServerFlowRunner`` (forked from a warm server). They are implemented in
:mod:`engine.runner`; the Docker and fork-server runners load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine._lazy import lazy_names
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


__getattr__ = lazy_names(__name__, _LAZY)
