"""Errors the local engine raises to user code.

They extend the one Sluice hierarchy in :mod:`shared.errors`, so a caller can
catch :class:`~shared.errors.SluiceError` for anything Sluice raised.

    SluiceError
    ├── InvalidParameters                   (shared)
    │   └── ParameterError                  also a TypeError: a flow call's arguments are wrong
    └── EngineError                         engine
        ├── FlowRunFailed                   flow_failed       a flow run did not complete and
        │                                                     has no exception of its own
        ├── UpstreamFailed                  upstream_failed   a task did not run (NotReady)
        ├── TriggerFailedError              trigger_failed    a trigger was not met
        ├── RunTimeout                      timeout           also a TimeoutError
        ├── Abort                           aborted           the orchestrator said stop
        ├── MissingContextError             no_run_context    also a RuntimeError
        ├── NotJSONable                     not_jsonable      a value that must cross as JSON
        ├── MissingResult                   missing_result    a state without a retrievable value
        ├── EntrypointError                 bad_entrypoint    a flow cannot be loaded from code
        └── BundleError                     bad_bundle        a project folder cannot be bundled,
                                                              or a bundle fetched or unpacked

A task or flow that raises keeps its own exception: the engine re-raises the
original object from ``future.result()`` or the flow call, never a wrapper.
"""

from __future__ import annotations

from shared.errors import InvalidParameters, SluiceError


class ParameterError(InvalidParameters, TypeError):
    """A flow was called with missing, unexpected or wrongly typed parameters.

    The message names the parameter; ``details["parameter"]`` holds its name
    when there is exactly one.
    """


class EngineError(SluiceError):
    code = "engine"


class FlowRunFailed(EngineError):
    """A flow run ended in a state other than COMPLETED without an exception to re-raise
    (for example the orchestrator rejected a transition)."""

    code = "flow_failed"


class UpstreamFailed(EngineError):
    """The task run ended ``NotReady``: an upstream did not complete, so it never ran."""

    code = "upstream_failed"


class TriggerFailedError(EngineError):
    """The task run ended ``TriggerFailed``: its trigger was not met by its upstreams."""

    code = "trigger_failed"


class RunTimeout(EngineError, TimeoutError):
    """A flow or task body ran longer than its ``timeout_seconds``."""

    code = "timeout"


class Abort(EngineError):
    """The orchestrator answered ABORT: the run must stop without further reports."""

    code = "aborted"


class MissingContextError(EngineError, RuntimeError):
    """A run-only API (``get_run_context``, ``task.submit``…) was used outside a run."""

    code = "no_run_context"


class NotJSONable(EngineError, TypeError):
    """A value that has to be stored or sent as JSON is not JSON-encodable."""

    code = "not_jsonable"


class MissingResult(EngineError):
    """A final state whose Python value is not available (for example a Failed state
    whose exception was not kept)."""

    code = "missing_result"


class EntrypointError(EngineError):
    """The code a run names cannot give a flow: a missing file or module, an import
    that raised, a missing attribute, or something that is not a flow."""

    code = "bad_entrypoint"


class BundleError(EngineError):
    """A deployment bundle cannot be made (too large, a link out of the folder) or
    used (missing from the store, corrupt, not unpackable). The message says which."""

    code = "bad_bundle"
