"""The one error hierarchy of Sluice, and its wire form.

Every failure a user can see is a :class:`SluiceError` with a stable ``code``
(what a program matches on) and a message written for a person (what to do
next). On the wire an error travels as ``{"error": {"code", "message",
"details"}}``; :func:`error_from_body` turns it back into the right class.

    SluiceError                     code
    ├── RequestError                bad_request       the request itself is wrong
    │   ├── PayloadTooLarge         payload_too_large
    │   ├── MalformedRequest        malformed         not JSON, wrong types, unknown fields
    │   └── InvalidParameters       invalid_parameters
    ├── NotFound                    not_found
    │   ├── DeploymentNotFound      deployment_not_found
    │   └── FlowRunNotFound         flow_run_not_found
    ├── AmbiguousName               ambiguous_name    a flow name matches several deployments
    ├── Conflict                    conflict          e.g. cancelling a finished run
    ├── StackUnavailable            unavailable       NATS unreachable or no service answers
    └── InternalError               internal

NATS and SQLite exceptions are translated into this tree at one boundary each
(``shared.connection`` for clients, the orchestrator's handler wrapper for the
service); nothing above those boundaries catches a third-party exception.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True):
    error: ErrorBody


class SluiceError(Exception):
    code: ClassVar[str] = "error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_body(self) -> ErrorBody:
        return ErrorBody(code=self.code, message=self.message, details=self.details)


class RequestError(SluiceError):
    code = "bad_request"


class PayloadTooLarge(RequestError):
    code = "payload_too_large"


class MalformedRequest(RequestError):
    code = "malformed"


class InvalidParameters(RequestError):
    code = "invalid_parameters"


class NotFound(SluiceError):
    code = "not_found"


class DeploymentNotFound(NotFound):
    code = "deployment_not_found"


class FlowRunNotFound(NotFound):
    code = "flow_run_not_found"


class AmbiguousName(SluiceError):
    code = "ambiguous_name"


class Conflict(SluiceError):
    code = "conflict"


class StackUnavailable(SluiceError):
    code = "unavailable"


class InternalError(SluiceError):
    code = "internal"


def _all_subclasses(cls: type[SluiceError]) -> list[type[SluiceError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


_BY_CODE: dict[str, type[SluiceError]] = {c.code: c for c in _all_subclasses(SluiceError)}


def error_from_body(body: ErrorBody) -> SluiceError:
    """Rebuild the exception a service replied with; unknown codes stay readable."""
    cls = _BY_CODE.get(body.code, SluiceError)
    err = cls(body.message, details=dict(body.details))
    if cls is SluiceError:
        err.code = body.code  # type: ignore[misc]  # keep a code from a newer server
    return err
