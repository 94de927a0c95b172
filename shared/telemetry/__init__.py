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
                            ``sluice-scheduler``, ``sluice-engine``, ``sluice-client`` …);
                            without it, each service of a process that runs several
                            (``sluice dev``) names its own spans (:func:`serve_as`)
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

**Metrics** (``_metrics``): the instruments the services record, with the
OpenTelemetry metrics API, exported by ``OTEL_METRICS_EXPORTER`` (``otlp``,
``console``, ``prometheus``) and by a Prometheus scrape endpoint on
``SLUICE_METRICS_PORT`` (``--metrics-port``; ``pip install 'sluice[metrics]'``).
Off by default, and then each ``record_*`` call is one global read.

Inside, three private modules: ``_setup`` (the ``OTEL_*`` environment, the
exporters, and the provider and tracer of this process: the only module-level
state) and ``_spans`` (the trace context in headers and environments, and the
span helpers, which read that state), and ``_metrics``. Import from ``shared.telemetry``.
"""

from ._metrics import (
    METRICS,
    install_metrics,
    metrics_enabled,
    observe,
    record_heartbeat_missed,
    record_request,
    record_run_created,
    record_run_started,
    record_scheduler_lag,
    record_transition,
    setup_metrics,
    shutdown_metrics,
)
from ._setup import (
    DEFAULT_FILE,
    FILE_ENV,
    INSTRUMENTATION,
    JsonLinesExporter,
    enabled,
    flush,
    install,
    install_in_memory,
    serve_as,
    serving_scope,
    setup,
    shutdown,
    tracer,
)
from ._spans import (
    DISPATCH_TEMPLATE,
    ENV_TRACEPARENT,
    ENV_TRACESTATE,
    TRACE_HEADERS,
    activated,
    attach,
    context_from_env,
    context_from_headers,
    end_span,
    env_with_trace,
    inject_headers,
    messaging_attributes,
    publish_span,
    request_span,
    runner_span,
    server_span,
    set_attributes,
    set_error,
    span,
    start_span,
)

__all__ = [
    "DEFAULT_FILE",
    "DISPATCH_TEMPLATE",
    "ENV_TRACEPARENT",
    "ENV_TRACESTATE",
    "FILE_ENV",
    "INSTRUMENTATION",
    "METRICS",
    "TRACE_HEADERS",
    "JsonLinesExporter",
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
    "install_metrics",
    "messaging_attributes",
    "metrics_enabled",
    "observe",
    "publish_span",
    "record_heartbeat_missed",
    "record_request",
    "record_run_created",
    "record_run_started",
    "record_scheduler_lag",
    "record_transition",
    "request_span",
    "runner_span",
    "serve_as",
    "server_span",
    "serving_scope",
    "set_attributes",
    "set_error",
    "setup",
    "setup_metrics",
    "shutdown",
    "shutdown_metrics",
    "span",
    "start_span",
    "tracer",
]
