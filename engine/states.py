"""Building and reading flow-run and task-run states on the user side.

A state is the wire record :class:`shared.states.State`; this module only
adds constructors with the right type and name, and predicates. It owns the
engine's extra state names (``NotReady``, ``TriggerFailed``, ``TimedOut``,
``Resumed``); which transitions are allowed is the orchestrator's business,
not this module's.

The Python value of a run (its return value or exception) is never stored
in ``State.data`` unless it is a small JSON scalar: ``data`` must stay
JSON-able because states travel on the wire. The value lives beside the
state, in a :class:`~engine.futures.TaskFuture` or a
:class:`~engine.flows.FlowRunResult`. A runtime with a result store (any
run reporting to a stack) keeps more: see :mod:`engine.results`.
"""

from __future__ import annotations

import os
import traceback
from datetime import UTC, datetime
from typing import Any

import msgspec

from shared.states import (
    AWAITING_RETRY,
    CACHED,
    DEFAULT_NAMES,
    MAX_TRACEBACK_CHARS,
    RETRYING,
    TERMINAL_TYPES,
    State,
    StateDetails,
    StateType,
)

__all__ = [
    "NOT_READY",
    "RESUMED",
    "TIMED_OUT",
    "TRIGGER_FAILED",
    "AwaitingRetry",
    "Cached",
    "Cancelled",
    "Completed",
    "Crashed",
    "Failed",
    "NotReady",
    "Pending",
    "Retrying",
    "Running",
    "Scheduled",
    "State",
    "StateType",
    "TimedOut",
    "TriggerFailed",
    "is_completed",
    "is_failed",
    "is_final",
]

#: PENDING: the task never ran because an upstream did not complete.
NOT_READY = "NotReady"
#: FAILED: the task never ran because its trigger was not met.
TRIGGER_FAILED = "TriggerFailed"
#: FAILED: the body ran longer than ``timeout_seconds``.
TIMED_OUT = "TimedOut"
#: COMPLETED: the task did not run again; its result came from an earlier
#: attempt of the flow run (see :mod:`engine._core.resume`).
RESUMED = "Resumed"

# The run-time's own frames, which lead every traceback of a body and say nothing
# about it; futures.py's stand between a flow's ``.result()`` and its task's raise.
_CORE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_core", "")
_FUTURES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "futures.py")


def _engine_frame(frame: traceback.FrameSummary) -> bool:
    return frame.filename.startswith(_CORE_DIR) or frame.filename == _FUTURES_FILE


def _without_engine_frames(shown: traceback.TracebackException) -> None:
    """Drop the engine's frames that lie between the caller and the user's
    innermost frame (and do the same along the chain of causes). Frames after
    the user's innermost one are kept: an error raised by the engine itself
    shows where."""
    seen: set[int] = set()
    each: traceback.TracebackException | None = shown
    while each is not None and id(each) not in seen:
        seen.add(id(each))
        frames = list(each.stack)
        users = [i for i, frame in enumerate(frames) if not _engine_frame(frame)]
        if users:
            last = users[-1]
            kept = [f for i, f in enumerate(frames) if i >= last or not _engine_frame(f)]
            if len(kept) < len(frames):
                each.stack = traceback.StackSummary.from_list(kept)
        each = each.__cause__ or (None if each.__suppress_context__ else each.__context__)


# Longest string copied into State.data; longer values stay beside the state.
_MAX_INLINE_STR = 1024


def _make(
    type_: StateType,
    name: str | None,
    message: str | None,
    data: Any,
    details: StateDetails | None,
    timestamp: datetime | None,
) -> State:
    return State(
        type=type_,
        name=name or DEFAULT_NAMES[type_],
        timestamp=timestamp or datetime.now(UTC),
        message=message,
        details=details or StateDetails(),
        data=data,
    )


def Scheduled(
    *,
    scheduled_time: datetime | None = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    name: str | None = None,
) -> State:
    details = StateDetails(scheduled_time=scheduled_time)
    return _make(StateType.SCHEDULED, name, message, None, details, timestamp)


def Pending(*, message: str | None = None, timestamp: datetime | None = None) -> State:
    return _make(StateType.PENDING, None, message, None, None, timestamp)


def Running(*, timestamp: datetime | None = None, details: StateDetails | None = None) -> State:
    return _make(StateType.RUNNING, None, None, None, details, timestamp)


def Completed(
    *,
    data: Any = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    details: StateDetails | None = None,
) -> State:
    return _make(StateType.COMPLETED, None, message, inline_data(data), details, timestamp)


def Failed(
    *,
    message: str | None = None,
    timestamp: datetime | None = None,
    name: str | None = None,
    details: StateDetails | None = None,
    error: BaseException | None = None,
) -> State:
    """FAILED; with ``error``, its details keep the exception's type and traceback."""
    return _make(StateType.FAILED, name, message, None, with_error(details, error), timestamp)


def Crashed(
    *,
    message: str | None = None,
    timestamp: datetime | None = None,
    error: BaseException | None = None,
) -> State:
    return _make(StateType.CRASHED, None, message, None, with_error(None, error), timestamp)


def Cancelled(*, message: str | None = None, timestamp: datetime | None = None) -> State:
    return _make(StateType.CANCELLED, None, message, None, None, timestamp)


def AwaitingRetry(
    *,
    scheduled_time: datetime,
    retry_count: int,
    message: str | None = None,
    timestamp: datetime | None = None,
    error: BaseException | None = None,
) -> State:
    """SCHEDULED/AwaitingRetry: attempt ``retry_count`` starts at ``scheduled_time``.

    ``error`` is the failure of the attempt before; its type and traceback are kept.
    """
    details = StateDetails(scheduled_time=scheduled_time, retry_count=retry_count)
    kept = with_error(details, error)
    return _make(StateType.SCHEDULED, AWAITING_RETRY, message, None, kept, timestamp)


def Retrying(*, retry_count: int, timestamp: datetime | None = None) -> State:
    """RUNNING/Retrying: the ``retry_count``-th retry is running."""
    details = StateDetails(retry_count=retry_count)
    return _make(StateType.RUNNING, RETRYING, None, None, details, timestamp)


def Cached(
    *,
    cache_key: str,
    cache_expiration: datetime | None,
    data: Any = None,
    timestamp: datetime | None = None,
) -> State:
    """COMPLETED/Cached: the value came from the cache; the function did not run."""
    details = StateDetails(cache_key=cache_key, cache_expiration=cache_expiration)
    return _make(StateType.COMPLETED, CACHED, None, inline_data(data), details, timestamp)


def NotReady(*, message: str, timestamp: datetime | None = None) -> State:
    """PENDING/NotReady: an upstream did not complete; the task will not run in this flow run."""
    return _make(StateType.PENDING, NOT_READY, message, None, None, timestamp)


def TriggerFailed(*, message: str, timestamp: datetime | None = None) -> State:
    """FAILED/TriggerFailed: the task's trigger was not met; the task did not run."""
    return _make(StateType.FAILED, TRIGGER_FAILED, message, None, None, timestamp)


def TimedOut(
    *, message: str, timestamp: datetime | None = None, error: BaseException | None = None
) -> State:
    return _make(StateType.FAILED, TIMED_OUT, message, None, with_error(None, error), timestamp)


def is_completed(state: State) -> bool:
    return state.type is StateType.COMPLETED


def is_failed(state: State) -> bool:
    return state.type in (StateType.FAILED, StateType.CRASHED)


def is_final(state: State) -> bool:
    """True for terminal states and for ``NotReady``, which never runs afterwards."""
    return state.type in TERMINAL_TYPES or state.name == NOT_READY


def inline_data(value: Any) -> Any:
    """The part of a result that may be copied into ``State.data``.

    Only JSON scalars (and strings up to 1 KiB) are copied: checking whether a
    container is JSON-able would mean encoding it on every task run.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str) and len(value) <= _MAX_INLINE_STR:
        return value
    return None


def describe_exception(exc: BaseException) -> str:
    """``"ValueError: bad input"``: what a state message says about an exception."""
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def error_type(exc: BaseException) -> str:
    """The exception's class as a state records it: ``ValueError``, ``mypkg.db.TableMissing``."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def format_traceback(exc: BaseException, limit: int = MAX_TRACEBACK_CHARS) -> str:
    """The exception's formatted traceback (with its causes), at most ``limit`` characters.

    A longer one keeps its end, cut at a frame boundary, because the frames
    nearest the raise (and the exception line itself) say what went wrong;
    a marker line says how much of the outer part was left out. The engine's
    run-time frames before the user's innermost frame are left out: those that
    call the body, and those a task's error passes through to reach the flow
    (``future.result()``).
    """
    shown = traceback.TracebackException.from_exception(exc)
    _without_engine_frames(shown)
    text = "".join(shown.format())
    if len(text) <= limit:
        return text
    head = "Traceback (most recent call last):\n"
    room = max(limit - len(head) - 80, 0)
    tail = text[-room:] if room else ""
    frame = tail.find("\n  File ")
    if frame >= 0:
        tail = tail[frame + 1 :]
    cut = len(text) - len(tail)
    return f"{head}  ... {cut} characters of outer frames left out ...\n{tail}"[-limit:]


def with_error(details: StateDetails | None, error: BaseException | None) -> StateDetails | None:
    """``details`` plus ``error``'s type and bounded traceback (unchanged without one)."""
    if error is None:
        return details
    return msgspec.structs.replace(
        details or StateDetails(), error_type=error_type(error), traceback=format_traceback(error)
    )
