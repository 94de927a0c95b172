"""The Sluice SDK: what users import.

Flows and tasks work with no server at all (calling a flow just runs it);
``Client`` and ``SyncClient`` talk to a running stack. The client and the
NATS library are imported on first use, so ``import engine`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._context import get_run_context
from ._logging import get_run_logger
from .executors import ConcurrentExecutor, DaskExecutor, LocalExecutor, ThreadPoolExecutor
from .flows import Flow, FlowRunResult, flow
from .futures import TaskFuture
from .tasks import Task, task, unmapped

if TYPE_CHECKING:
    from .client import Client
    from .sync import SyncClient

__all__ = [
    "Client",
    "ConcurrentExecutor",
    "DaskExecutor",
    "Flow",
    "FlowRunResult",
    "LocalExecutor",
    "SyncClient",
    "Task",
    "TaskFuture",
    "ThreadPoolExecutor",
    "flow",
    "get_run_context",
    "get_run_logger",
    "task",
    "unmapped",
]

_LAZY = {"Client": ".client", "SyncClient": ".sync"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
