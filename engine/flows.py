"""``@flow``: a function whose calls become flow runs.

    @flow(retries=1, timeout_seconds=600)
    def etl(day: date, limit: int = 100) -> int:
        rows = extract.submit(day)
        return load(rows)

    etl(date(2030, 1, 1))                     # runs it; returns 100 or raises
    etl("2030-01-01", return_state=True)      # the final State (parameters coerced)
    result = etl.run({"day": "2030-01-01"}, return_tasks=[load])
    result.state, result.result(), result.task_states(load)

Calling a sync flow runs it to the end and returns its value, or raises the
exception that failed it (a :class:`~engine.exceptions.ParameterError`,
which is also a TypeError, for missing or wrongly typed parameters). Calling
an async flow returns a coroutine that does the same, so
``asyncio.run(my_flow())`` works. ``return_state=True`` returns the final
State instead and never raises for a failed run (the keyword is taken by
the engine, so a flow cannot have a parameter of that name; the same goes
for ``wait_for`` and ``return_state`` on tasks). A flow called inside
another flow is a subflow: a run of its own whose ``parent_flow_run_id`` is
the caller's run.

``Flow.run``/``Flow.run_async`` take parameters as a dict and return a
:class:`FlowRunResult` with the run, its final state, its value and — for
the tasks named in ``return_tasks`` — the final states of their runs (the
engine keeps no task runs by default).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from engine._core.flow_engine import FlowRunResult, run_flow_async, run_flow_sync
from engine._core.params import FnSignature
from engine._core.retry import RetryPolicy
from engine._core.start import StartTasks
from engine.executors import Executor, LocalExecutor

if TYPE_CHECKING:
    from engine.deployments import RunnerDeployment

__all__ = ["Flow", "FlowRunResult", "flow"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Flow(Generic[P, R]):
    """A flow: the function plus how its runs behave. Immutable; see :meth:`with_options`."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        version: str | None = None,
        description: str | None = None,
        retries: int = 0,
        retry_delay_seconds: float | Iterable[float] = 0,
        timeout_seconds: float | None = None,
        executor: Executor | None = None,
        validate_parameters: bool = True,
        log_prints: bool | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@flow needs a function, not {fn!r}")
        if timeout_seconds is not None and timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be > 0, not {timeout_seconds}")
        delays = (
            retry_delay_seconds
            if isinstance(retry_delay_seconds, int | float)
            else list(retry_delay_seconds)
        )
        self.fn = fn
        self.name: str = name or getattr(fn, "__name__", "flow").replace("_", "-")
        self.version = version
        self.description = description or inspect.getdoc(fn)
        self.retry_policy = RetryPolicy.build(retries, delays)
        self.timeout_seconds = timeout_seconds
        #: Configuration only: each run starts a clone of it.
        self.executor: Executor = executor if executor is not None else LocalExecutor()
        self.validate_parameters = validate_parameters
        #: None inherits the parent flow's setting (off for a top-level flow).
        self.log_prints = log_prints
        self.signature = FnSignature.of(fn)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"Flow({self.name!r})"

    @property
    def retries(self) -> int:
        return self.retry_policy.retries

    def with_options(self, **changes: Any) -> Flow[P, R]:
        """A copy with some decorator arguments changed."""
        current: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "retries": self.retry_policy.retries,
            "retry_delay_seconds": list(self.retry_policy.delays),
            "timeout_seconds": self.timeout_seconds,
            "executor": self.executor,
            "validate_parameters": self.validate_parameters,
            "log_prints": self.log_prints,
        }
        unknown = set(changes) - set(current)
        if unknown:
            raise TypeError(f"unknown flow options: {', '.join(sorted(unknown))}")
        return Flow(self.fn, **{**current, **changes})

    def parameter_schema(self) -> dict[str, Any]:
        """The JSON schema of the parameters, as a deployment stores it.

        Properties carry the hints' schemas and JSON-able defaults; parameters
        without defaults are ``required``; ``*args`` is left out; unknown names
        are refused unless the flow takes ``**kwargs``.
        """
        return self.signature.schema(self.name, self.description)

    def to_deployment(self, name: str, **options: Any) -> RunnerDeployment:
        """This flow as a deployment named ``name``, ready for ``serve`` or a Runner.

        Options: ``interval``, ``cron``, ``rrule``, ``schedule``, ``timezone``,
        ``parameters`` (defaults for runs), ``description``, ``tags``,
        ``version``, ``enforce_parameter_schema``, ``concurrency_limit``,
        ``flow_runner``, ``entrypoint`` and ``path`` (where the code is; by
        default this flow's file relative to the working directory), ``paused``,
        ``queue`` (the dispatch queue runners serve; default ``default``),
        ``triggers`` (``shared.models.FlowRunTrigger``: run when runs of another
        deployment or flow reach given states), ``bundle`` (ship the project
        folder, ``path`` or else this flow's folder, to runners through the
        stack's bundle store, so runners on other hosts need no copy of it).
        """
        from engine.deployments import RunnerDeployment

        return RunnerDeployment.from_flow(self, name, **options)

    def serve(
        self,
        name: str | None = None,
        *,
        limit: int | None = None,
        pause_on_shutdown: bool = True,
        **options: Any,
    ) -> None:
        """Serve this flow as one deployment from this process until Ctrl-C (see ``serve``).

        Without ``queue=`` in ``options`` only this process runs the deployment.
        """
        from engine.runner import serve

        serve(
            self.to_deployment(name or self.name, **options),
            limit=limit,
            pause_on_shutdown=pause_on_shutdown,
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the flow; see the module docstring. An async flow returns a coroutine."""
        return_state = bool(kwargs.pop("return_state", False))
        if self.is_async:
            return self._call_async(args, kwargs, return_state)  # type: ignore[return-value]
        result = run_flow_sync(self, args, kwargs, ())
        return result.state if return_state else result.result()  # type: ignore[return-value]

    async def _call_async(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], return_state: bool
    ) -> Any:
        result = await run_flow_async(self, args, kwargs, ())
        return result.state if return_state else result.result()

    def run(
        self,
        parameters: dict[str, Any] | None = None,
        *,
        return_tasks: Iterable[Any] = (),
        start_tasks: Iterable[Any] = (),
        from_run: str | None = None,
        start_inputs: dict[Any, dict[str, Any]] | None = None,
    ) -> FlowRunResult[R]:
        """Run a sync flow with ``parameters`` by name; never raises for a failed run.

        ``return_tasks`` lists tasks (or task names) whose runs the result
        keeps. ``start_tasks`` runs only the part of the flow from those
        tasks on, with the results ``from_run`` (an earlier run of this flow)
        kept for the tasks before them, and ``start_inputs`` ({task: {arg:
        value}}) over a start task's arguments; see :mod:`engine._core.start`.
        Raises TypeError for an async flow (use :meth:`run_async`), ValueError
        for bad start options, and Abort if the orchestrator aborts the run.
        """
        if self.is_async:
            raise TypeError(f"flow {self.name!r} is async: use `await flow.run_async(...)`")
        start = _start_tasks(start_tasks, from_run, start_inputs)
        return run_flow_sync(self, (), dict(parameters or {}), return_tasks, start=start)

    @overload
    async def run_async(
        self: Flow[P, Coroutine[Any, Any, T]],
        parameters: dict[str, Any] | None = None,
        *,
        return_tasks: Iterable[Any] = (),
        start_tasks: Iterable[Any] = (),
        from_run: str | None = None,
        start_inputs: dict[Any, dict[str, Any]] | None = None,
    ) -> FlowRunResult[T]: ...

    @overload
    async def run_async(
        self: Flow[P, T],
        parameters: dict[str, Any] | None = None,
        *,
        return_tasks: Iterable[Any] = (),
        start_tasks: Iterable[Any] = (),
        from_run: str | None = None,
        start_inputs: dict[Any, dict[str, Any]] | None = None,
    ) -> FlowRunResult[T]: ...

    async def run_async(
        self,
        parameters: dict[str, Any] | None = None,
        *,
        return_tasks: Iterable[Any] = (),
        start_tasks: Iterable[Any] = (),
        from_run: str | None = None,
        start_inputs: dict[Any, dict[str, Any]] | None = None,
    ) -> FlowRunResult[Any]:
        """:meth:`run` for an async flow. Raises TypeError for a sync flow."""
        if not self.is_async:
            raise TypeError(f"flow {self.name!r} is not async: use flow.run(...)")
        start = _start_tasks(start_tasks, from_run, start_inputs)
        return await run_flow_async(self, (), dict(parameters or {}), return_tasks, start=start)


def _start_tasks(
    tasks: Iterable[Any], from_run: str | None, inputs: dict[Any, dict[str, Any]] | None
) -> StartTasks | None:
    tasks = list(tasks)
    if not tasks:
        if from_run is not None or inputs:
            raise ValueError("from_run and start_inputs go with start_tasks")
        return None
    return StartTasks(tasks, from_run=from_run, inputs=inputs)


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...


@overload
def flow(
    *,
    name: str | None = None,
    version: str | None = None,
    description: str | None = None,
    retries: int = 0,
    retry_delay_seconds: float | Iterable[float] = 0,
    timeout_seconds: float | None = None,
    executor: Executor | None = None,
    validate_parameters: bool = True,
    log_prints: bool | None = None,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(fn: Any = None, /, **options: Any) -> Any:
    """Make a function a flow; use bare (``@flow``) or with options (``@flow(retries=2)``).

    Options: ``name`` (default: the function name with ``-`` for ``_``),
    ``version``, ``description`` (default: the docstring), ``retries``,
    ``retry_delay_seconds`` (a number or per-retry list), ``timeout_seconds``,
    ``executor`` (default LocalExecutor), ``validate_parameters`` (coerce and
    check against type hints), ``log_prints`` (send ``print`` to the run log).
    """
    if fn is None:
        return lambda f: Flow(f, **options)
    return Flow(fn, **options)
