"""Run loggers, the handler that hands their records to the reporter, and log_prints.

:func:`get_run_logger` returns an adapter over the ``sluice.runs`` logger
that stamps each record with ``flow_run_id``, ``flow_run_name``,
``task_run_id`` and ``task_run_name``. One handler on that logger passes
every record to the reporter of the run that logged it (the seam a NATS
reporter uses to publish ``flowrun.logs.<id>``); records also propagate to
Python logging as usual.

The engine logs each run's life to the same loggers, so the run's log says
what happened without the user logging anything: failures at ERROR with
the whole traceback, each retry at WARNING (what failed, which retry, how
long until it starts), task starts and ends at DEBUG (dropped unless the
``sluice.runs`` logger is lowered to DEBUG, which costs one level check
per task run).

``log_prints`` replaces ``builtins.print`` once per process with a function
that, only inside a run that asked for it and only for prints to stdout,
logs the text at INFO instead of printing it. Everywhere else it is plain
``print``.
"""

from __future__ import annotations

import builtins
import logging
import sys
import threading
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

from engine._core.context import FlowRunContext, current_flow_run, current_task_run
from engine._core.reporting import Reporter, TaskRunInfo
from engine.exceptions import MissingContextError
from engine.states import describe_exception

__all__ = ["RUN_LOGGER", "RunLogger", "get_run_logger", "run_logger"]

RUN_LOGGER = "sluice.runs"
_REPORTER_ATTR = "_sluice_reporter"


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose records carry the ids of the run they were logged in."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        given = kwargs.get("extra")
        kwargs["extra"] = {**given, **(self.extra or {})} if given else self.extra
        return msg, kwargs


class _ReporterHandler(logging.Handler):
    """Hands run records to the reporter that the logging adapter named."""

    def emit(self, record: logging.LogRecord) -> None:
        reporter: Reporter | None = getattr(record, _REPORTER_ATTR, None)
        if reporter is not None:
            try:
                reporter.log(record)
            except Exception:
                self.handleError(record)


_logger = logging.getLogger(RUN_LOGGER)
# INFO by default so run records reach the reporter even when the root logger
# is left at WARNING; what Python logging displays is still up to its handlers.
_logger.setLevel(logging.INFO)
_logger.addHandler(_ReporterHandler())


_flow_logger = logging.getLogger(f"{RUN_LOGGER}.flow")
_task_logger = logging.getLogger(f"{RUN_LOGGER}.task")


def get_run_logger() -> RunLogger:
    """A logger for the current flow or task run.

    Raises MissingContextError outside a run.
    """
    task_ctx = current_task_run()
    flow_ctx = current_flow_run() if task_ctx is None else task_ctx.flow_run
    if task_ctx is None and flow_ctx is None:
        raise MissingContextError("get_run_logger() was called outside a flow or task run")
    return run_logger(flow_ctx, task_ctx.run if task_ctx else None)


def run_logger(flow_ctx: FlowRunContext | None, task_run: TaskRunInfo | None = None) -> RunLogger:
    """A logger whose records belong to ``task_run`` (or to the flow run when None)."""
    extra: dict[str, Any] = {
        "flow_run_id": flow_ctx.run.id if flow_ctx else None,
        "flow_run_name": flow_ctx.run.name if flow_ctx else None,
        "task_run_id": task_run.id if task_run else None,
        "task_run_name": task_run.name if task_run else None,
        # A task called outside a flow is not a reported run: its records stay local.
        _REPORTER_ATTR: flow_ctx.runtime.reporter if flow_ctx else None,
    }
    return RunLogger(_task_logger if task_run else _flow_logger, extra)


# --- the engine's own lines about a run's life -----------------------------------------
def log_started(flow_ctx: FlowRunContext, task_run: TaskRunInfo | None, retry: int) -> None:
    """DEBUG: an attempt of the run starts (checked first: this is on every task's path)."""
    logger = _task_logger if task_run else _flow_logger
    if logger.isEnabledFor(logging.DEBUG):
        what = _what(flow_ctx, task_run)
        text = f"{what} started" + (f" (retry {retry})" if retry else "")
        run_logger(flow_ctx, task_run).debug(text)


def log_ended(flow_ctx: FlowRunContext, task_run: TaskRunInfo | None, state_text: str) -> None:
    """DEBUG: the run reached its final state (``state_text``), failed or not."""
    logger = _task_logger if task_run else _flow_logger
    if logger.isEnabledFor(logging.DEBUG):
        run_logger(flow_ctx, task_run).debug("%s ended %s", _what(flow_ctx, task_run), state_text)


def log_failed(
    flow_ctx: FlowRunContext,
    task_run: TaskRunInfo | None,
    error: BaseException | None,
    message: str | None = None,
) -> None:
    """ERROR: the run failed for good; the record carries ``error``'s whole traceback."""
    what = _what(flow_ctx, task_run)
    text = message or (describe_exception(error) if error is not None else "no reason given")
    run_logger(flow_ctx, task_run).error("%s failed: %s", what, text, exc_info=_exc_info(error))


def log_retry(
    flow_ctx: FlowRunContext,
    task_run: TaskRunInfo | None,
    error: BaseException | None,
    retry: int,
    retries: int,
    delay: float,
    reason: str | None = None,
) -> None:
    """WARNING: an attempt failed and retry ``retry`` of ``retries`` starts in ``delay`` s.

    ``reason`` says why when there is no ``error`` to show.
    """
    what = _what(flow_ctx, task_run)
    why = describe_exception(error) if error is not None else (reason or "no reason given")
    run_logger(flow_ctx, task_run).warning(
        "%s failed (%s); retry %d of %d in %.1f s", what, why, retry, retries, delay,
        exc_info=_exc_info(error),
    )  # fmt: skip


def _what(flow_ctx: FlowRunContext, task_run: TaskRunInfo | None) -> str:
    return f"task {task_run.name}" if task_run else f"flow run {flow_ctx.run.name}"


def _exc_info(error: BaseException | None) -> Any:
    return (type(error), error, error.__traceback__) if error is not None else None


# --- log_prints ---------------------------------------------------------------------
_log_prints: ContextVar[bool] = ContextVar("sluice_log_prints", default=False)
_plain_print = builtins.print
_patch_lock = threading.Lock()


def _print(*args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None,
           flush: bool = False) -> None:  # fmt: skip
    if not _log_prints.get() or (file is not None and file is not sys.stdout):
        _plain_print(*args, sep=sep, end=end, file=file, flush=flush)
        return
    try:
        logger = get_run_logger()
    except MissingContextError:
        _plain_print(*args, sep=sep, end=end, file=file, flush=flush)
        return
    logger.info((" " if sep is None else sep).join(str(a) for a in args))


def set_log_prints(enabled: bool) -> Any:
    """Route prints of the current context to the run logger; returns a reset token."""
    if enabled and builtins.print is not _print:
        with _patch_lock:
            builtins.print = _print
    return _log_prints.set(enabled)


def reset_log_prints(token: Any) -> None:
    _log_prints.reset(token)
