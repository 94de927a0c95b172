"""Run loggers, the handler that hands their records to the reporter, and log_prints.

:func:`get_run_logger` returns an adapter over the ``sluice.runs`` logger
that stamps each record with ``flow_run_id``, ``flow_run_name``,
``task_run_id`` and ``task_run_name``. One handler on that logger passes
every record to the reporter of the run that logged it (the seam a NATS
reporter uses to publish ``flowrun.logs.<id>``); records also propagate to
Python logging as usual.

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

from engine._core.context import current_flow_run, current_task_run
from engine._core.reporting import Reporter
from engine.exceptions import MissingContextError

__all__ = ["RUN_LOGGER", "RunLogger", "get_run_logger"]

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


def get_run_logger() -> RunLogger:
    """A logger for the current flow or task run.

    Raises MissingContextError outside a run.
    """
    task_ctx = current_task_run()
    flow_ctx = current_flow_run() if task_ctx is None else task_ctx.flow_run
    if task_ctx is None and flow_ctx is None:
        raise MissingContextError("get_run_logger() was called outside a flow or task run")
    extra: dict[str, Any] = {
        "flow_run_id": flow_ctx.run.id if flow_ctx else None,
        "flow_run_name": flow_ctx.run.name if flow_ctx else None,
        "task_run_id": task_ctx.run.id if task_ctx else None,
        "task_run_name": task_ctx.run.name if task_ctx else None,
        # A task called outside a flow is not a reported run: its records stay local.
        _REPORTER_ATTR: flow_ctx.runtime.reporter if flow_ctx else None,
    }
    name = f"{RUN_LOGGER}.{'task' if task_ctx else 'flow'}"
    return RunLogger(logging.getLogger(name), extra)


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
