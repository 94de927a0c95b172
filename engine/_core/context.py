"""What the engine knows about the run it is inside, kept in context variables.

* :class:`Runtime` — the services a run uses: reporter, clock, cache store,
  result store, random source. The default is local (no stack);
  :func:`use_runtime` installs another for the runs started inside it
  (tests, ``python -m engine`` and the CLI install a stack reporter).
  Subflows inherit their parent's runtime.
* :class:`FlowRunContext` — one per flow run: the run record, its
  parameters, its executor and the bookkeeping the final state needs.
* :class:`TaskRunContext` — one per task run, set while its function runs.

Context variables follow the code into executor threads (the engine copies
the context) and into asyncio tasks, never into other processes.

**The configured-stack rule.** A top-level flow call reports to a stack when
a runtime is installed (:func:`use_runtime`) or, with none installed, when
the environment variable ``SLUICE_NATS_URL`` is set (:func:`stack_configured`):
then the call opens a stack runtime of its own, for that run and its
subflows, and closes it when the run ends. A configured stack that cannot be
reached fails the call with StackUnavailable before the body runs: a run
that was meant to be watched must not run unreported. With neither, flows
run purely locally.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import os
import random
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import msgspec

from engine._core.cache import CacheStore, MemoryCache
from engine._core.reporting import FlowRunInfo, LocalReporter, Reporter, TaskRunInfo
from engine.exceptions import MissingContextError
from shared.clock import Clock, SystemClock
from shared.states import State

if TYPE_CHECKING:
    from engine._core.resume import ResumePlan
    from engine._core.start import StartTasks
    from engine.executors import Executor
    from engine.flows import Flow
    from engine.futures import TaskFuture
    from engine.results import ResultStore
    from engine.tasks import Task

__all__ = [
    "FlowRunContext",
    "Runtime",
    "TaskRunContext",
    "current_runtime",
    "get_run_context",
    "stack_configured",
    "use_runtime",
]

#: Set (to anything non-empty) to make flow calls report to that stack.
STACK_ENV = "SLUICE_NATS_URL"

#: Shared by every run of this process that uses the default runtime, so a
#: second call of a flow finds what the first one cached.
_PROCESS_CACHE = MemoryCache()


class Runtime(msgspec.Struct, frozen=True, kw_only=True):
    """The services runs use. Frozen: replace it, do not change it."""

    reporter: Reporter = msgspec.field(default_factory=LocalReporter)
    clock: Clock = msgspec.field(default_factory=SystemClock)
    cache: CacheStore = msgspec.field(default_factory=lambda: _PROCESS_CACHE)
    #: Where COMPLETED results are kept (see :mod:`engine.results`). None (local
    #: runs): results stay in the process and states carry small scalars only.
    results: ResultStore | None = None
    #: Uniform in [0, 1); used for retry jitter only.
    random: Callable[[], float] = random.random


_DEFAULT_RUNTIME = Runtime()
# Driver threads mostly wait on the cluster; this bounds how many attempts one
# flow run keeps in flight on an out-of-process executor.
_DRIVER_THREADS = 64
_runtime_var: ContextVar[Runtime | None] = ContextVar("sluice_runtime", default=None)
_flow_var: ContextVar[FlowRunContext | None] = ContextVar("sluice_flow_run", default=None)
_task_var: ContextVar[TaskRunContext | None] = ContextVar("sluice_task_run", default=None)


@contextlib.contextmanager
def use_runtime(runtime: Runtime) -> Iterator[Runtime]:
    """Run the flows started inside this block with ``runtime``."""
    token = _runtime_var.set(runtime)
    try:
        yield runtime
    finally:
        _runtime_var.reset(token)


def current_runtime() -> Runtime:
    """The runtime of the enclosing flow run, else the one installed, else the default."""
    flow_ctx = _flow_var.get()
    if flow_ctx is not None:
        return flow_ctx.runtime
    return _runtime_var.get() or _DEFAULT_RUNTIME


def installed_runtime() -> Runtime | None:
    """The runtime :func:`use_runtime` installed here, if any."""
    return _runtime_var.get()


def stack_configured() -> bool:
    """True when ``SLUICE_NATS_URL`` is set: flow calls without a runtime report there.

    The one place the engine looks at the environment for this decision;
    everything else about the connection comes from ``Settings.from_env()``.
    """
    return bool(os.environ.get(STACK_ENV))


class FlowRunContext:
    """The state of one flow run that its tasks and subflows need.

    Mutated only by the engine, from the flow's thread and executor threads;
    every mutation is a single atomic operation (``next`` on a counter, a
    list append) or happens under ``_lock``.
    """

    def __init__(
        self,
        *,
        flow: Flow[..., Any],
        run: FlowRunInfo,
        runtime: Runtime,
        executor: Executor,
        log_prints: bool,
        parent: FlowRunContext | None,
        return_tasks: frozenset[Any] = frozenset(),
    ) -> None:
        self.flow = flow
        self.run = run
        self.runtime = runtime
        self.log_prints = log_prints
        self.parent = parent
        self._executor_spec = executor
        self._executor: Executor | None = None
        self._drivers: concurrent.futures.ThreadPoolExecutor | None = None
        self._exits = contextlib.ExitStack()
        self._lock = threading.Lock()
        self._counters: dict[str, Iterator[int]] = {}
        self._key_counters: dict[str, Iterator[int]] = {}
        #: Results of an earlier attempt that task runs of this one may reuse.
        self.resume: ResumePlan | None = None
        #: The tasks this run starts from (``flow.run(start_tasks=...)``), if any.
        self.start: StartTasks | None = None
        #: Futures submitted in this run; the engine waits for all before finishing.
        self.futures: list[TaskFuture[Any]] = []
        #: (run name, final state, exception if known) of failed task runs and subflows.
        self.failures: list[tuple[str, State, BaseException | None]] = []
        #: Task runs recorded for ``Flow.run(return_tasks=...)``, keyed by what was asked.
        self._wanted = return_tasks
        self.task_runs: dict[Any, list[TaskRunInfo]] = {key: [] for key in return_tasks}
        #: Set when the run stopped waiting for its body (timeout): later task calls refuse.
        self.abandoned = threading.Event()

    @property
    def flow_run_id(self) -> str:
        return self.run.id

    @property
    def parameters(self) -> dict[str, Any]:
        return self.run.parameters

    def next_task_run_name(self, task_name: str) -> str:
        counter = self._counters.get(task_name)
        if counter is None:
            with self._lock:
                counter = self._counters.setdefault(task_name, itertools.count())
        return f"{task_name}-{next(counter)}"

    def next_task_key(self, task_name: str) -> str:
        """``<task name>:<n>`` for the n-th call (or map) of that name: the same
        in every attempt of the run as long as the flow calls tasks in the same order."""
        counter = self._key_counters.get(task_name)
        if counter is None:
            with self._lock:
                counter = self._key_counters.setdefault(task_name, itertools.count())
        return f"{task_name}:{next(counter)}"

    def restart_task_keys(self) -> None:
        """A retried body calls its tasks again: their keys start again from 0."""
        with self._lock:
            self._key_counters = {}

    def record_task_run(self, task: Task[..., Any], run: TaskRunInfo) -> None:
        """Keep ``run`` if the caller of ``Flow.run`` asked for this task's runs."""
        if not self._wanted:
            return
        for key in (task, task.name):
            if key in self._wanted:
                self.task_runs[key].append(run)

    def executor(self) -> Executor:
        """The run's executor, started on first use and closed by :meth:`close`."""
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = self._exits.enter_context(self._executor_spec.clone())
        return self._executor

    def driver_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads that drive task runs whose attempts run out of process (Dask).

        Waiting threads cost little, and the pool starts drivers in submission
        order, so a driver only ever waits for runs that already started.
        """
        if self._drivers is None:
            with self._lock:
                if self._drivers is None:
                    pool = concurrent.futures.ThreadPoolExecutor(
                        _DRIVER_THREADS, thread_name_prefix="sluice-driver"
                    )
                    abandoned = self.abandoned.is_set
                    self._exits.callback(
                        lambda: pool.shutdown(wait=not abandoned(), cancel_futures=abandoned())
                    )
                    self._drivers = pool
        return self._drivers

    def on_close(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` when the run closes, after what was registered later (LIFO)."""
        self._exits.callback(fn)

    def close(self, exc: BaseException | None = None) -> None:
        """Close what the run started. Waits for running work unless ``exc`` is given."""
        if exc is None:
            self._exits.close()
        else:
            self._exits.__exit__(type(exc), exc, exc.__traceback__)


class TaskRunContext:
    """The task run whose function is running, and what it was called with."""

    __slots__ = ("flow_run", "parameters", "run", "runtime", "task")

    def __init__(
        self,
        *,
        task: Task[..., Any],
        run: TaskRunInfo,
        parameters: dict[str, Any],
        flow_run: FlowRunContext | None,
        runtime: Runtime,
    ) -> None:
        self.task = task
        self.run = run
        self.parameters = parameters
        self.flow_run = flow_run
        self.runtime = runtime

    @property
    def task_run_id(self) -> str:
        return self.run.id

    @property
    def flow_run_id(self) -> str | None:
        return self.run.flow_run_id


def get_run_context() -> TaskRunContext | FlowRunContext:
    """The innermost run: the task run inside a task, else the flow run.

    Raises MissingContextError outside any run.
    """
    ctx: TaskRunContext | FlowRunContext | None = _task_var.get() or _flow_var.get()
    if ctx is None:
        raise MissingContextError("get_run_context() was called outside a flow or task run")
    return ctx


def current_flow_run() -> FlowRunContext | None:
    return _flow_var.get()


def current_task_run() -> TaskRunContext | None:
    return _task_var.get()
