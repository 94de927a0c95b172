"""Spans and the trace context that links them: W3C headers, environments, span helpers.

Owns the W3C trace context (``traceparent`` / ``tracestate``) carried in NATS
message headers and in a child process's environment (``TRACEPARENT`` /
``TRACESTATE``), the messaging attributes of spans around NATS messages, and
the helpers that open, make current and end spans.

It must not decide *what* is traced (callers open the spans) nor hold any
state: whether tracing is on, and the tracer, are ``_setup``'s, read through
that module at each call, so :func:`~shared.telemetry.install` and
:func:`~shared.telemetry.shutdown` take effect at once. Every helper returns
at once when tracing is off, before importing anything from ``opentelemetry``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from . import _setup

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

__all__ = [
    "DISPATCH_TEMPLATE",
    "ENV_TRACEPARENT",
    "ENV_TRACESTATE",
    "TRACE_HEADERS",
    "activated",
    "attach",
    "context_from_env",
    "context_from_headers",
    "end_span",
    "env_with_trace",
    "inject_headers",
    "messaging_attributes",
    "publish_span",
    "request_span",
    "runner_span",
    "server_span",
    "set_attributes",
    "set_error",
    "span",
    "start_span",
]

ENV_TRACEPARENT = "TRACEPARENT"
ENV_TRACESTATE = "TRACESTATE"
#: Header names of the W3C trace context (lower case, as the propagator writes them).
TRACE_HEADERS = ("traceparent", "tracestate")
#: The dispatch subject with its variable parts named (``messaging.destination.template``).
DISPATCH_TEMPLATE = "flowrun.dispatch.{queue}.{deployment_id}"


# --- carrying the context ------------------------------------------------------------------
def _propagator() -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def inject_headers(
    headers: dict[str, str] | None = None, context: Context | None = None
) -> dict[str, str]:
    """``headers`` (a new dict if None) with the trace context of ``context`` (default:
    the current one) added as ``traceparent`` / ``tracestate``. Unchanged when off."""
    out = {} if headers is None else headers
    if _setup._tracer is not None:
        _propagator().inject(out, context=context)
    return out


def context_from_headers(headers: Mapping[str, str] | None) -> Context | None:
    """The trace context NATS message headers carry, or None (none there, or tracing off)."""
    if _setup._tracer is None or not headers or "traceparent" not in headers:
        return None
    return _propagator().extract({k: v for k, v in headers.items() if k in TRACE_HEADERS})


def env_with_trace(env: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """A copy of a child process's ``env`` carrying ``context`` (default: the current one)
    as ``TRACEPARENT`` / ``TRACESTATE``; stale values are dropped. ``env`` when off."""
    if _setup._tracer is None:
        return env
    carrier: dict[str, str] = {}
    _propagator().inject(carrier, context=context)
    out = {k: v for k, v in env.items() if k not in (ENV_TRACEPARENT, ENV_TRACESTATE)}
    for key in TRACE_HEADERS:
        if key in carrier:
            out[key.upper()] = carrier[key]
    return out


def context_from_env(environ: Mapping[str, str] | None = None) -> Context | None:
    """The trace context this process was started in (``TRACEPARENT``), or None."""
    env = os.environ if environ is None else environ
    if _setup._tracer is None or not env.get(ENV_TRACEPARENT):
        return None
    carrier = {"traceparent": env[ENV_TRACEPARENT]}
    if env.get(ENV_TRACESTATE):
        carrier["tracestate"] = env[ENV_TRACESTATE]
    return _propagator().extract(carrier)


@contextlib.contextmanager
def activated(context: Context | None) -> Iterator[None]:
    """Make ``context`` the current one inside the block (nothing when None)."""
    if context is None:
        yield
        return
    from opentelemetry import context as otel_context

    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


# --- spans ---------------------------------------------------------------------------------
def messaging_attributes(
    subject: str,
    operation: str,
    *,
    operation_name: str | None = None,
    template: str | None = None,
    body_size: int | None = None,
    consumer_group: str | None = None,
) -> dict[str, Any]:
    """OpenTelemetry messaging attributes of one NATS message.

    ``operation`` is the operation type (``send``, ``receive``, ``process``);
    ``template`` the subject with its variable parts named, for subjects that
    carry ids (``flowrun.dispatch.{queue}.{deployment_id}``).
    """
    attrs: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation_name or operation,
    }
    if template is not None:
        attrs["messaging.destination.template"] = template
    if body_size is not None:
        attrs["messaging.message.body.size"] = body_size
    if consumer_group is not None:
        attrs["messaging.consumer.group.name"] = consumer_group
    return attrs


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
    context: Context | None = None,
) -> Iterator[Span | None]:
    """A span that is the current one inside the block (None when off).

    ``kind`` is ``internal``, ``client``, ``server``, ``producer`` or
    ``consumer``; ``context`` the parent (default: the current context). An
    exception leaving the block is recorded and marks the span as failed.
    """
    tracer = _setup.current_tracer()
    if tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    with tracer.start_as_current_span(
        name, context=context, kind=SpanKind[kind.upper()], attributes=attributes
    ) as current:
        yield current


def start_span(name: str, attributes: Mapping[str, Any] | None = None) -> Span | None:
    """A span, child of the current context, that is *not* made current (None when off).

    For work whose steps do not nest like a ``with`` block (a generator
    driven step by step): make it current where needed with :func:`attach`,
    and end it with :func:`end_span`.
    """
    tracer = _setup.current_tracer()
    if tracer is None:
        return None
    return tracer.start_span(name, attributes=attributes)


def attach(current: Span) -> Callable[[], None]:
    """Make ``current`` the current span in this context; returns how to undo that."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    token = otel_context.attach(trace.set_span_in_context(current))
    return lambda: otel_context.detach(token)


def end_span(
    current: Span | None,
    attributes: Mapping[str, Any] | None = None,
    *,
    error: str | None = None,
    exception: BaseException | None = None,
) -> None:
    """Set ``attributes``, mark the span failed when ``error`` says why, and end it.

    With ``exception`` too, the span gets an ``exception`` event (type, message,
    stack trace) and ``error.type`` is the exception's class. Ending a span
    twice does nothing the second time.
    """
    if current is None or not current.is_recording():
        return
    if attributes:
        current.set_attributes(attributes)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        _record_exception(current, exception)
        current.set_status(Status(StatusCode.ERROR, error))
    current.end()


def _record_exception(current: Span, exception: BaseException | None) -> None:
    if exception is None:
        return
    current.record_exception(exception)
    current.set_attribute("error.type", _class_name(exception))


def _class_name(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def set_attributes(attributes: Mapping[str, Any]) -> None:
    """Add ``attributes`` to the current span (nothing when off or outside a span)."""
    if _setup._tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(attributes)


def set_error(error_type: str, message: str, exception: BaseException | None = None) -> None:
    """Mark the current span failed with ``error.type`` (e.g. a Sluice error code).

    With ``exception``, an ``exception`` event is recorded and ``error.type`` is
    the exception's class instead.
    """
    if _setup._tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    current = trace.get_current_span()
    current.set_attribute("error.type", error_type)
    _record_exception(current, exception)
    current.set_status(Status(StatusCode.ERROR, message))


@contextlib.contextmanager
def request_span(subject: str, body_size: int | None = None) -> Iterator[dict[str, str] | None]:
    """A client span around a request on ``subject``; yields the headers to send
    with it (None when off), which carry the span as the remote parent."""
    if _setup._tracer is None:
        yield None
        return
    attrs = messaging_attributes(subject, "send", body_size=body_size)
    with span(f"send {subject}", kind="client", attributes=attrs):
        yield inject_headers()


@contextlib.contextmanager
def server_span(
    subject: str,
    headers: Mapping[str, str] | None,
    *,
    queue: str | None = None,
    body_size: int | None = None,
) -> Iterator[Span | None]:
    """A server span around handling one request, child of the context its headers carry."""
    if _setup._tracer is None:
        yield None
        return
    attrs = messaging_attributes(subject, "process", body_size=body_size, consumer_group=queue)
    with span(
        f"process {subject}", kind="server", attributes=attrs, context=context_from_headers(headers)
    ) as current:
        yield current


@contextlib.contextmanager
def publish_span(
    subject: str,
    *,
    template: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    context: Context | None = None,
) -> Iterator[dict[str, str] | None]:
    """A producer span around publishing one message; yields the trace headers to
    add to it (None when off). ``context`` is the parent (default: the current one)."""
    if _setup._tracer is None:
        yield None
        return
    attrs = messaging_attributes(subject, "send", template=template)
    attrs.update(attributes or {})
    with span(f"send {template or subject}", kind="producer", attributes=attrs, context=context):
        yield inject_headers()


@contextlib.contextmanager
def runner_span(
    subject: str, run_id: str, parent: Context | None, *, template: str = DISPATCH_TEMPLATE
) -> Iterator[Span | None]:
    """``submit flowrun.dispatch.{queue}.{deployment_id}``: a consumer span, child of
    the dispatch message's context (:func:`context_from_headers`), around starting
    the flow-run process. Inside it, :func:`env_with_trace` hands this span to the
    process as its parent."""
    if _setup._tracer is None:
        yield None
        return
    attrs = messaging_attributes(subject, "process", operation_name="submit", template=template)
    attrs["sluice.flow_run.id"] = run_id
    name = f"submit {template}"  # {operation name} {destination}, as the conventions say
    with span(name, kind="consumer", attributes=attrs, context=parent) as current:
        yield current
