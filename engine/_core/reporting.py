"""The one seam through which the engine reports runs, their states and logs.

Every state change of a flow run or task run, and every run log record,
goes through a :class:`Reporter`. With no stack configured that is
:class:`LocalReporter`, which accepts everything and keeps nothing.
:class:`engine._stack.reporter.StackReporter` implements the same protocol against a
running stack: it creates flow runs on ``flowrun.create``, proposes their
states on ``flowrun.state.propose`` and publishes task states and logs.

A flow run's id belongs to whoever stores it: :meth:`Reporter.flow_run_created`
may return the run as the stack stored it, and the engine then uses that
record (its id and name) for everything after — task records, logs,
subflows' ``parent_flow_run_id``.

Flow-run states are *proposed*: the reporter answers with a
:class:`Proposal` carrying the orchestrator's decision, and the engine —
not the reporter — honours it, because only the engine knows whether it is
running in a thread or an event loop and which clock to sleep on:

=========  ==================================================================
ACCEPT     ``proposal.state`` (possibly not the proposed one) is the run's state
WAIT       sleep ``delay_seconds`` on the runtime clock, then propose again
REJECT     ``proposal.state`` (the orchestrator's current state) becomes the
           run's final state; the engine does not do what it proposed (run
           the body, retry, …) and stops
ABORT      the engine raises :class:`~engine.exceptions.Abort`: no more reports
=========  ==================================================================

Task-run states are *reported*: no answer, because the orchestrator does not
orchestrate task runs. Methods are synchronous and are called from executor
threads concurrently, so implementations must be thread-safe and should not
block for long (a network reporter hands task states and logs to its own
I/O thread; only flow-state proposals wait for an answer).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import msgspec

from shared.messages import Decision
from shared.states import State

__all__ = ["Decision", "FlowRunInfo", "LocalReporter", "Proposal", "Reporter", "TaskRunInfo"]


class FlowRunInfo(msgspec.Struct, kw_only=True, eq=False):
    """The engine's record of one flow run. ``state`` is its current state.

    ``parameters`` hold the Python values the flow was called with; a
    reporter that sends them anywhere must encode them (and cope with values
    that are not JSON).
    """

    id: str
    name: str
    flow_name: str
    state: State
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    parent_flow_run_id: str | None = None


class TaskRunInfo(msgspec.Struct, kw_only=True, eq=False):
    """The engine's record of one task run. ``state`` is its current state."""

    id: str
    name: str
    task_name: str
    state: State
    flow_run_id: str | None = None
    #: Position in a ``task.map`` call, else None.
    map_index: int | None = None
    #: Ids of the task runs this one waited for.
    upstream_ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    #: Identifies the call within its flow run across attempts: ``<task name>:<n>``
    #: for the n-th call of that task name (from 0), plus ``[<i>]`` for the i-th
    #: child of a ``map`` (one n per map call). Empty outside a flow.
    task_key: str = ""


class Proposal(msgspec.Struct, frozen=True):
    """The answer to a proposed flow-run state."""

    decision: Decision
    state: State
    reason: str | None = None
    delay_seconds: float | None = None


class Reporter(Protocol):
    def flow_run_created(self, run: FlowRunInfo) -> FlowRunInfo | None:
        """A flow run exists, in ``run.state`` (PENDING for a local run).

        Returns the run as it was stored when the reporter assigned it another
        id, name or state (the engine adopts it), or None to keep ``run``.
        Raises (StackUnavailable, …) when the run cannot be created: the flow
        call then fails before its body runs.
        """
        ...

    def propose_flow_state(self, run: FlowRunInfo, state: State) -> Proposal:
        """Ask for the flow run to move to ``state``; see the module docstring."""
        ...

    def task_run_created(self, run: TaskRunInfo) -> None:
        """A task run exists, in ``run.state``."""
        ...

    def task_run_state(self, run: TaskRunInfo, state: State) -> None:
        """The task run moved to ``state`` (``run.state`` is already updated)."""
        ...

    def log(self, record: logging.LogRecord) -> None:
        """A log record of a run; it carries ``flow_run_id`` and ``task_run_id``."""
        ...


class LocalReporter:
    """The reporter for runs without a stack: accepts every state, ships nothing.

    Log records still reach Python logging (the ``sluice.runs`` logger
    propagates), so ``logging.basicConfig(level="INFO")`` shows them.
    """

    def flow_run_created(self, run: FlowRunInfo) -> FlowRunInfo | None:
        return None

    def propose_flow_state(self, run: FlowRunInfo, state: State) -> Proposal:
        return Proposal(Decision.ACCEPT, state)

    def task_run_created(self, run: TaskRunInfo) -> None:
        pass

    def task_run_state(self, run: TaskRunInfo, state: State) -> None:
        pass

    def log(self, record: logging.LogRecord) -> None:
        pass
