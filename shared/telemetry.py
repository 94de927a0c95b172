"""Tracing with OpenTelemetry: one trace per flow run, across every process it touches.

Owns the set-up from the standard ``OTEL_*`` variables, the tracer, the W3C
trace context (``traceparent`` / ``tracestate``) carried in NATS message
headers and in a child process's environment (``TRACEPARENT`` /
``TRACESTATE``), and the messaging attributes of spans around NATS messages.
It must not decide *what* is traced: callers open the spans.

**Off by default, and then free.** Until :func:`setup` finds an exporter to
use (or a test installs one), :func:`enabled` is False, nothing from
``opentelemetry`` is imported, and every helper here returns at once (the
span helpers yield None, the inject helpers return their input). Hot paths
test :func:`enabled` before doing anything else.

Settings (read once, by the first :func:`setup` of a process):

==========================  ===================================================
``OTEL_TRACES_EXPORTER``    ``none`` (default), ``console``, ``otlp``,
                            ``sluice-file``; several separated by commas
``OTEL_SERVICE_NAME``       default: the process's own (``sluice-orchestrator``,
                            ``sluice-scheduler``, ``sluice-engine``, ``sluice-client`` …)
``OTEL_SDK_DISABLED``       ``true``: off, whatever else is set
``SLUICE_OTEL_FILE``        where ``sluice-file`` appends its spans, one JSON
                            object a line (default ``sluice-spans.jsonl``)
``OTEL_EXPORTER_OTLP_*``    read by the OTLP exporter (``pip install 'sluice[otlp]'``;
                            ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` wants the grpc one)
``OTEL_TRACES_SAMPLER``…    read by the OpenTelemetry SDK itself
==========================  ===================================================

``otlp`` without the exporter package installed logs one warning and exports
nothing; it never stops a process. The first set-up also becomes the global
OpenTelemetry tracer provider (unless the application installed its own), so
spans that user code opens inside a task land in the same trace.

**For the runner** (the hop between a dispatch message and the flow-run
process), three calls, all free when tracing is off::

    parent = telemetry.context_from_headers(msg.headers)          # the dispatch message
    with telemetry.runner_span(msg.subject, run_id, parent):      # "runner submits run"
        env = telemetry.env_with_trace(env)                       # the child's environment
        ...start ``python -m engine`` with ``env``...

``python -m engine`` reads ``TRACEPARENT`` / ``TRACESTATE`` back
(:func:`context_from_env`), so its flow-run and task spans join the trace.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "DISPATCH_TEMPLATE",
    "ENV_TRACEPARENT",
    "ENV_TRACESTATE",
    "FILE_ENV",
    "activated",
    "attach",
    "context_from_env",
    "context_from_headers",
    "enabled",
    "end_span",
    "env_with_trace",
    "flush",
    "inject_headers",
    "install",
    "install_in_memory",
    "messaging_attributes",
    "publish_span",
    "request_span",
    "runner_span",
    "server_span",
    "set_error",
    "setup",
    "shutdown",
    "span",
    "start_span",
    "tracer",
]

log = logging.getLogger("sluice.telemetry")

ENV_TRACEPARENT = "TRACEPARENT"
ENV_TRACESTATE = "TRACESTATE"
FILE_ENV = "SLUICE_OTEL_FILE"
DEFAULT_FILE = "sluice-spans.jsonl"
#: Header names of the W3C trace context (lower case, as the propagator writes them).
TRACE_HEADERS = ("traceparent", "tracestate")
INSTRUMENTATION = "sluice"
#: The dispatch subject with its variable parts named (``messaging.destination.template``).
DISPATCH_TEMPLATE = "flowrun.dispatch.{queue}.{deployment_id}"

_lock = threading.Lock()
_configured = False
_provider: TracerProvider | None = None
_tracer: Tracer | None = None


# --- set-up ---------------------------------------------------------------------------
def enabled() -> bool:
    """True once spans are recorded and exported somewhere (cheap: a global read)."""
    return _tracer is not None


def setup(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Configure tracing for this process from ``OTEL_*`` (module docstring).

    ``service`` is the default ``service.name``. Only the first call of a
    process (or one after :func:`shutdown`) looks at the environment; later
    calls, and any call after :func:`install`, change nothing. Returns
    :func:`enabled`. Never raises for a bad setting: it logs a warning.
    """
    global _configured
    env = os.environ if environ is None else environ
    with _lock:
        if _configured:
            return enabled()
        _configured = True
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return False
        wanted = [
            name.strip().lower()
            for name in env.get("OTEL_TRACES_EXPORTER", "none").split(",")
            if name.strip()
        ]
        wanted = [name for name in wanted if name != "none"]
        if not wanted:
            return False
        exporters = [e for e in (_exporter(name, env) for name in wanted) if e is not None]
        if not exporters:
            return False
        _install_locked(exporters, env.get("OTEL_SERVICE_NAME") or service)
        from opentelemetry import trace

        if not hasattr(trace.get_tracer_provider(), "add_span_processor"):
            trace.set_tracer_provider(_provider)  # type: ignore[arg-type]
    log.info("tracing on: %s", ", ".join(wanted))
    return True


def _exporter(name: str, env: Mapping[str, str]) -> tuple[SpanExporter, bool] | None:
    """The exporter of one ``OTEL_TRACES_EXPORTER`` entry and whether it is batched."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(), True
    if name == "sluice-file":
        # Not batched: a flow-run process may be killed, and what it did must be on disk.
        return cast(
            "SpanExporter", JsonLinesExporter(Path(env.get(FILE_ENV) or DEFAULT_FILE))
        ), False
    if name == "otlp":
        return _otlp_exporter(env)
    log.warning("OTEL_TRACES_EXPORTER=%s is not supported (console, otlp, sluice-file)", name)
    return None


def _otlp_exporter(env: Mapping[str, str]) -> tuple[SpanExporter, bool] | None:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    kind = "grpc" if protocol.strip().lower() == "grpc" else "http"
    try:
        module = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{kind}.trace_exporter")
    except ImportError:
        log.warning(
            "OTEL_TRACES_EXPORTER=otlp, but opentelemetry-exporter-otlp-proto-%s is not "
            "installed (pip install 'sluice[otlp]'); traces of this process are not exported",
            kind,
        )
        return None
    return module.OTLPSpanExporter(), True


def install(
    exporters: Sequence[SpanExporter], *, service: str = "sluice", batch: bool = False
) -> None:
    """Record spans and hand them to ``exporters`` from now on, whatever ``OTEL_*`` says.

    For tests and for applications that build their own exporter. Replaces
    an earlier :func:`install` (shutting it down); later :func:`setup` calls
    change nothing. ``batch`` exports in a background thread instead of at
    each span's end.
    """
    global _configured
    with _lock:
        _shutdown_locked()
        _configured = True
        _install_locked([(e, batch) for e in exporters], service)


def install_in_memory(service: str = "sluice") -> InMemorySpanExporter:
    """Install an in-memory exporter (spans exported as they end) and return it."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    install([exporter], service=service)
    return exporter


def _install_locked(exporters: Sequence[tuple[SpanExporter, bool]], service: str) -> None:
    global _provider, _tracer
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    for exporter, batched in exporters:
        processor = BatchSpanProcessor if batched else SimpleSpanProcessor
        provider.add_span_processor(processor(exporter))
    _provider = provider
    _tracer = provider.get_tracer(INSTRUMENTATION)


def flush(timeout_seconds: float = 5.0) -> None:
    """Export every ended span now (e.g. before a process exits on its own terms)."""
    provider = _provider
    if provider is not None:
        provider.force_flush(int(timeout_seconds * 1000))


def shutdown() -> None:
    """Flush and stop recording; the next :func:`setup` reads the environment again."""
    global _configured
    with _lock:
        _shutdown_locked()
        _configured = False


def _shutdown_locked() -> None:
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def tracer() -> Tracer:
    """The tracer spans are opened with (a no-op one when tracing is off)."""
    if _tracer is not None:
        return _tracer
    from opentelemetry import trace

    return trace.NoOpTracer()


class JsonLinesExporter:
    """Appends each span as one JSON object a line to a file (``sluice-file``).

    Several processes may append to one file: each line is written with a
    single ``write`` on a file opened for appending.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        import json

        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = "".join(
            json.dumps(json.loads(s.to_json()), separators=(",", ":")) + "\n" for s in spans
        )
        try:
            with self._lock, self.path.open("a", encoding="utf-8") as out:
                out.write(lines)
        except OSError as exc:
            log.warning("could not write spans to %s: %s", self.path, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


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
    if _tracer is not None:
        _propagator().inject(out, context=context)
    return out


def context_from_headers(headers: Mapping[str, str] | None) -> Context | None:
    """The trace context NATS message headers carry, or None (none there, or tracing off)."""
    if _tracer is None or not headers or "traceparent" not in headers:
        return None
    return _propagator().extract({k: v for k, v in headers.items() if k in TRACE_HEADERS})


def env_with_trace(env: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """A copy of a child process's ``env`` carrying ``context`` (default: the current one)
    as ``TRACEPARENT`` / ``TRACESTATE``; stale values are dropped. ``env`` when off."""
    if _tracer is None:
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
    if _tracer is None or not env.get(ENV_TRACEPARENT):
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
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(
        name, context=context, kind=SpanKind[kind.upper()], attributes=attributes
    ) as current:
        yield current


def start_span(name: str, attributes: Mapping[str, Any] | None = None) -> Span | None:
    """A span, child of the current context, that is *not* made current (None when off).

    For work whose steps do not nest like a ``with`` block (a generator
    driven step by step): make it current where needed with :func:`attach`,
    and end it with :func:`end_span`.
    """
    if _tracer is None:
        return None
    return _tracer.start_span(name, attributes=attributes)


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
) -> None:
    """Set ``attributes``, mark the span failed when ``error`` says why, and end it.

    Ending a span twice does nothing the second time.
    """
    if current is None or not current.is_recording():
        return
    if attributes:
        current.set_attributes(attributes)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        current.set_status(Status(StatusCode.ERROR, error))
    current.end()


def set_error(error_type: str, message: str) -> None:
    """Mark the current span failed with ``error.type`` (e.g. a Sluice error code)."""
    if _tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    current = trace.get_current_span()
    current.set_attribute("error.type", error_type)
    current.set_status(Status(StatusCode.ERROR, message))


@contextlib.contextmanager
def request_span(subject: str, body_size: int | None = None) -> Iterator[dict[str, str] | None]:
    """A client span around a request on ``subject``; yields the headers to send
    with it (None when off), which carry the span as the remote parent."""
    if _tracer is None:
        yield None
        return
    attrs = messaging_attributes(subject, "send", operation_name="request", body_size=body_size)
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
    if _tracer is None:
        yield None
        return
    attrs = messaging_attributes(subject, "process", body_size=body_size, consumer_group=queue)
    with span(
        f"process {subject}", kind="server", attributes=attrs, context=context_from_headers(headers)
    ) as current:
        yield current


@contextlib.contextmanager
def publish_span(
    subject: str, *, template: str | None = None, attributes: Mapping[str, Any] | None = None
) -> Iterator[dict[str, str] | None]:
    """A producer span around publishing one message; yields the trace headers to
    add to it (None when off)."""
    if _tracer is None:
        yield None
        return
    attrs = messaging_attributes(subject, "send", operation_name="publish", template=template)
    attrs.update(attributes or {})
    with span(f"send {template or subject}", kind="producer", attributes=attrs):
        yield inject_headers()


@contextlib.contextmanager
def runner_span(
    subject: str, run_id: str, parent: Context | None, *, template: str = DISPATCH_TEMPLATE
) -> Iterator[Span | None]:
    """ "Runner submits run": a consumer span, child of the dispatch message's context
    (:func:`context_from_headers`), around starting the flow-run process. Inside it,
    :func:`env_with_trace` hands this span to the process as its parent."""
    if _tracer is None:
        yield None
        return
    attrs = messaging_attributes(subject, "process", operation_name="submit", template=template)
    attrs["sluice.flow_run.id"] = run_id
    with span("submit flow run", kind="consumer", attributes=attrs, context=parent) as current:
        yield current
