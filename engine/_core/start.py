"""Start tasks: run only the part of a flow from some tasks on.

``flow.run(params, start_tasks=[...], from_run=RUN_ID, start_inputs={...})``
(and ``sluice run --start-task NAME --from-run RUN_ID`` with ``--path``,
``--module`` or ``--execute``). The
flow's body runs as always, and each task call gets a role, in call order:

* **before** — a call made before the first call of a start task. With
  ``from_run`` it does not run: it ends COMPLETED/``Resumed`` with the result
  that earlier run of the same flow kept for the same task key. When that run
  kept no result for it (or there is no ``from_run``), it runs as usual.
* **start** — every call of a task named in ``start_tasks`` (a Task, a task
  name, or a task key such as ``load-2``). It is a root: its trigger is not
  evaluated and failed upstreams do not stop it. Its inputs are its
  arguments (the upstream values, resumed from ``from_run`` or computed),
  with ``start_inputs[name]`` over them. An input whose upstream did not
  complete and that ``start_inputs`` does not give is **missing**: the start
  task ends FAILED without running, and its message names each missing
  input and how to give it.
* **after** — every later call of another task: it runs, never reusing
  ``from_run``'s results.

Raises ValueError (before the run starts) for an empty ``start_tasks``, a
``start_inputs`` entry for a task that is not a start task, a ``from_run``
without a stack or of another flow.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from engine._core.reporting import TaskRunInfo
from engine._core.resume import ResumePlan, plan_resume

__all__ = ["StartTasks"]

Role = Literal["before", "start", "after"]


def _name_of(item: Any) -> str:
    name = getattr(item, "name", item)
    if not isinstance(name, str) or not name:
        raise ValueError(f"start_tasks takes tasks or task names, not {item!r}")
    return name


class StartTasks:
    """Which tasks a run starts from, where their inputs come from, and each call's role."""

    def __init__(
        self,
        tasks: Iterable[Any],
        *,
        from_run: str | None = None,
        inputs: Mapping[Any, Mapping[str, Any]] | None = None,
    ) -> None:
        self.names = frozenset(_name_of(t) for t in tasks)
        if not self.names:
            raise ValueError("start_tasks is empty: name at least one task to start from")
        self.from_run = from_run
        self.inputs = {_name_of(k): dict(v) for k, v in (inputs or {}).items()}
        stray = sorted(set(self.inputs) - self.names)
        if stray:
            raise ValueError(f"start_inputs names {', '.join(stray)}, which are not start tasks")
        self._lock = threading.Lock()
        self._reached = False
        self._roles: dict[str, Role] = {}

    def load(self, reporter: Any, flow_name: str) -> ResumePlan | None:
        """The results ``from_run`` kept, for the calls before the start tasks."""
        if self.from_run is None:
            return None
        fetch = getattr(reporter, "task_records", None)
        if fetch is None:
            raise ValueError(
                "from_run= reads an earlier run's results from a stack: set SLUICE_NATS_URL"
            )
        earlier_flow, records = fetch(self.from_run)
        if earlier_flow != flow_name:
            raise ValueError(
                f"from_run {self.from_run} is a run of flow {earlier_flow!r}, not {flow_name!r}"
            )
        return plan_resume(records)

    def assign(self, run: TaskRunInfo) -> Role:
        """Give a task call its role; called in call order, as the run is created."""
        with self._lock:
            role: Role
            if run.task_name in self.names or run.task_key in self.names:
                role, self._reached = "start", True
            else:
                role = "after" if self._reached else "before"
            self._roles[run.id] = role
            return role

    def role(self, run_id: str) -> Role | None:
        return self._roles.get(run_id)

    def inputs_for(self, run: TaskRunInfo, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """A start task's arguments with the given inputs over them, and what is
        missing ('' when nothing is)."""
        given = self.inputs.get(run.task_name, {}) | self.inputs.get(run.task_key, {})
        unknown = sorted(set(given) - set(params))
        if unknown:
            return params, (
                f"start task {run.name}: start_inputs gives {', '.join(unknown)}, "
                f"which it does not take (it takes {', '.join(params) or 'nothing'})"
            )
        merged = params | given
        # An upstream that did not complete hands on its exception (or an
        # UpstreamFailed/TriggerFailedError) in place of a value.
        missing = [k for k, v in merged.items() if isinstance(v, BaseException)]
        if not missing:
            return merged, ""
        source = f"run {self.from_run} kept no result" if self.from_run else "there is no from_run"
        return merged, (
            f"start task {run.name} did not run: input(s) {', '.join(missing)} missing — "
            f"their upstream task runs did not complete and {source} for them; give them "
            f"with start_inputs={{{run.task_name!r}: {{{missing[0]!r}: ...}}}}"
        )
