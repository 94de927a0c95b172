"""Set-up of tracing in this process: the ``OTEL_*`` environment, the exporters and the provider.

Owns the state of tracing in a process, and is the one place that holds it:
whether :func:`setup` has looked at the environment yet, the installed
tracer provider and its tracer (``None`` while tracing is off), and the lock
that guards changing them. Builds the exporters ``OTEL_TRACES_EXPORTER``
names (``console``, ``otlp``, and :class:`JsonLinesExporter` for
``sluice-file``), installs, flushes and shuts down the provider.

It must not open spans or carry trace context (``_spans`` does, reading
``_tracer`` here at each call), and it must not import the OpenTelemetry SDK
before tracing is asked for: every SDK import is inside the function that
needs it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Tracer

__all__ = [
    "DEFAULT_FILE",
    "FILE_ENV",
    "INSTRUMENTATION",
    "JsonLinesExporter",
    "enabled",
    "flush",
    "install",
    "install_in_memory",
    "serve_as",
    "serving_scope",
    "setup",
    "shutdown",
    "tracer",
]

log = logging.getLogger("sluice.telemetry")

FILE_ENV = "SLUICE_OTEL_FILE"
DEFAULT_FILE = "sluice-spans.jsonl"
INSTRUMENTATION = "sluice"

_lock = threading.Lock()
_configured = False
_provider: TracerProvider | None = None
_tracer: Tracer | None = None
#: The provider's service name, and whether OTEL_SERVICE_NAME chose it (then it is
#: the one name of every span of the process).
_service = "sluice"
_named_by_env = False
#: Tracers of the other services of this process (``sluice dev`` runs them all in
#: one), each with its own ``service.name``, exporting through the provider's processors.
_service_tracers: dict[str, Tracer] = {}
_serving: ContextVar[str | None] = ContextVar("sluice_telemetry_service", default=None)


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
        global _named_by_env
        _named_by_env = bool(env.get("OTEL_SERVICE_NAME"))
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
    global _configured, _named_by_env
    with _lock:
        _shutdown_locked()
        _configured, _named_by_env = True, False
        _install_locked([(e, batch) for e in exporters], service)


def install_in_memory(service: str = "sluice") -> InMemorySpanExporter:
    """Install an in-memory exporter (spans exported as they end) and return it."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    install([exporter], service=service)
    return exporter


def serve_as(service: str) -> None:
    """Spans opened from now on in this context, and in tasks started from it,
    carry ``service.name = service``.

    Each service calls it as it starts, before it subscribes, so that several
    services in one process (``sluice dev``) tell their spans apart. Does
    nothing while tracing is off or when ``OTEL_SERVICE_NAME`` names the process.
    """
    if _provider is None or _named_by_env:
        return
    with _lock:
        provider = _provider
        if provider is not None and service != _service and service not in _service_tracers:
            _service_tracers[service] = _forwarding_provider(provider, service).get_tracer(
                INSTRUMENTATION
            )
    _serving.set(service)


@contextlib.contextmanager
def serving_scope() -> Iterator[None]:
    """Undo, on leaving the block, what :func:`serve_as` did inside it, so a service
    started from another's context (a test, ``sluice dev``) does not rename it."""
    token = _serving.set(_serving.get())
    try:
        yield
    finally:
        _serving.reset(token)


def current_tracer() -> Tracer | None:
    """The tracer of the service this context serves (see :func:`serve_as`); None when off."""
    name = _serving.get()
    if name is None:
        return _tracer
    return _service_tracers.get(name, _tracer)


def _forwarding_provider(main: TracerProvider, service: str) -> TracerProvider:
    """A provider named ``service`` whose spans go through ``main``'s processors."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    class Forward(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            main._active_span_processor.on_start(span, parent_context=parent_context)

        def on_end(self, span: Any) -> None:
            main._active_span_processor.on_end(span)

        # Shutting down and flushing are the main provider's business.

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(Forward())
    return provider


def _install_locked(exporters: Sequence[tuple[SpanExporter, bool]], service: str) -> None:
    global _provider, _tracer, _service
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    for exporter, batched in exporters:
        processor = BatchSpanProcessor if batched else SimpleSpanProcessor
        provider.add_span_processor(processor(exporter))
    _provider = provider
    _tracer = provider.get_tracer(INSTRUMENTATION)
    _service = service
    _service_tracers.clear()


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
    _service_tracers.clear()
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
