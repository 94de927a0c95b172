"""The Sluice SDK: what users import.

Flows and tasks work with no server at all (calling a flow just runs it).
With ``SLUICE_NATS_URL`` set, a flow call reports its run, task states, logs
and result to that stack instead (see :mod:`engine._core.context`).
``Client``/``SyncClient`` and ``create_flow_run``/``wait_for_flow_run``
(:mod:`engine.runs`) talk to a running stack. The client and the NATS
library are imported on first use, so ``import engine`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine._core.context import get_run_context
from engine._core.logs import get_run_logger
from engine._lazy import lazy_names
from engine.executors import (
    ConcurrentExecutor,
    DaskExecutor,
    LocalExecutor,
    SynchronousExecutor,
    ThreadPoolExecutor,
)
from engine.flows import Flow, FlowRunResult, flow
from engine.futures import TaskFuture
from engine.tasks import Task, task, unmapped

if TYPE_CHECKING:
    from engine.client import Client
    from engine.deployments import DeploymentSpec, RunnerDeployment
    from engine.runner import Runner, aserve, serve
    from engine.runs import create_flow_run, wait_for_flow_run
    from engine.sync import SyncClient

__all__ = [
    "Client",
    "ConcurrentExecutor",
    "DaskExecutor",
    "DeploymentSpec",
    "Flow",
    "FlowRunResult",
    "LocalExecutor",
    "Runner",
    "RunnerDeployment",
    "SyncClient",
    "SynchronousExecutor",
    "Task",
    "TaskFuture",
    "ThreadPoolExecutor",
    "aserve",
    "create_flow_run",
    "flow",
    "get_run_context",
    "get_run_logger",
    "serve",
    "task",
    "unmapped",
    "wait_for_flow_run",
]

_LAZY = {
    "Client": "engine.client",
    "SyncClient": "engine.sync",
    "create_flow_run": "engine.runs",
    "wait_for_flow_run": "engine.runs",
    "Runner": "engine.runner",
    "serve": "engine.runner",
    "aserve": "engine.runner",
    "RunnerDeployment": "engine.deployments",
    "DeploymentSpec": "engine.deployments",
}


__getattr__ = lazy_names(__name__, _LAZY)
