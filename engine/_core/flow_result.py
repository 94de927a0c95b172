"""What the flow engine takes and gives back: an existing run to execute, a finished run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from engine._core.reporting import FlowRunInfo, TaskRunInfo
from engine.exceptions import FlowRunFailed
from shared.states import State, StateType

if TYPE_CHECKING:
    from engine._core.resume import ResumePlan

__all__ = ["ExistingRun", "FlowRunResult"]

R = TypeVar("R")


class FlowRunResult(msgspec.Struct, Generic[R], frozen=True, eq=False):
    """A finished flow run: its record, final state, value, and the task runs asked for.

    ``task_runs`` maps each task (or task name) passed as ``return_tasks`` to
    its runs in this flow run, in creation order; each run's ``state`` is final.
    """

    run: FlowRunInfo
    state: State
    task_runs: Mapping[Any, tuple[TaskRunInfo, ...]] = msgspec.field(default_factory=dict)
    value: Any = None
    exception: BaseException | None = None

    @property
    def id(self) -> str:
        return self.run.id

    def task_states(self, task: Any) -> list[State]:
        """Final states of the runs of ``task`` (a Task or its name) that were asked for."""
        return [r.state for r in self.task_runs[task]]

    def result(self) -> R:
        """The flow's return value; raises its exception if it did not complete."""
        if self.state.type is StateType.COMPLETED:
            return self.value
        if self.exception is not None:
            raise self.exception
        raise FlowRunFailed(
            f"flow run {self.run.name!r} ended {self.state.describe()}: "
            f"{self.state.message or 'no details'}"
        )


class ExistingRun(msgspec.Struct, frozen=True, eq=False):
    """A flow run that already exists in the stack, to execute rather than create.

    ``run.parameters`` are the stored ones (validated like a call's);
    ``run.state`` its current state; ``resume`` what earlier attempts left.
    """

    run: FlowRunInfo
    resume: ResumePlan | None = None
