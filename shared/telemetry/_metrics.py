"""Metrics with OpenTelemetry's metrics API: Sluice's instruments and their export.

Owns the meter provider of a process, the instruments the services record
(:data:`METRICS` lists each with its unit and meaning), the gauges that are
observed at collection time from sources the services register, and the
exporters: OTLP and the console by ``OTEL_METRICS_EXPORTER``, and a
Prometheus scrape endpoint by ``SLUICE_METRICS_PORT`` (or ``--metrics-port``).

**Off by default, and then free.** Until :func:`setup_metrics` finds an
exporter (or a test installs a reader), ``_instruments`` is None, the SDK is
not imported, and every ``record_*`` function returns after one global read.
It must not decide *when* something happens: callers record, this module
only counts.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader

__all__ = [
    "METRICS",
    "install_metrics",
    "metrics_enabled",
    "observe",
    "record_heartbeat_missed",
    "record_request",
    "record_run_created",
    "record_run_started",
    "record_scheduler_lag",
    "record_transition",
    "setup_metrics",
    "shutdown_metrics",
]

log = logging.getLogger("sluice.telemetry")


#: Every metric: (OpenTelemetry name, kind, unit, what it measures). docs/telemetry.md
#: lists them with their Prometheus names.
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("sluice.flow_runs.created", "counter", "{run}", "runs created, by queue"),
    ("sluice.flow_runs.transitions", "counter", "{transition}", "accepted transitions, by state"),
    ("sluice.flow_run.start.latency", "histogram", "s", "created → first Running"),
    ("sluice.flow_run.start.lag", "histogram", "s", "due (expected start) → first Running"),
    ("sluice.rpc.server.duration", "histogram", "s", "serving one request, by subject, decision"),
    (
        "sluice.scheduler.lag",
        "histogram",
        "s",
        "the scheduler offering a run behind its planned moment",
    ),
    ("sluice.runner.heartbeats.missed", "counter", "{runner}", "runners whose heartbeat lapsed"),
    ("sluice.dispatch.backlog", "gauge", "{run}", "runs offered and not yet claimed, by queue"),
    ("sluice.runner.slots.in_use", "gauge", "{slot}", "runs a live runner holds, by runner"),
    ("sluice.runner.slots.free", "gauge", "{slot}", "free slots of a live runner, by runner"),
    (
        "sluice.deployment.slots.in_use",
        "gauge",
        "{slot}",
        "concurrency slots held, by deployment with a limit",
    ),
)

# Seconds: from a few milliseconds (a claim) to minutes (a late run).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

_lock = threading.Lock()
_configured = False
_provider: MeterProvider | None = None
_instruments: _Instruments | None = None
_http: Any = None  # the scrape endpoint's server, shut down with the provider
#: Gauge name -> functions returning (value, attributes) pairs at collection time.
_sources: dict[str, list[Callable[[], Iterable[tuple[float, Mapping[str, str]]]]]] = {}


class _Instruments:
    def __init__(self, meter: Meter) -> None:
        def histogram(name: str, unit: str, description: str) -> Any:
            return meter.create_histogram(
                name,
                unit=unit,
                description=description,
                explicit_bucket_boundaries_advisory=_BUCKETS,
            )

        spec = {name: (unit, text) for name, _, unit, text in METRICS}
        self.created = meter.create_counter(
            "sluice.flow_runs.created", *spec["sluice.flow_runs.created"]
        )
        self.transitions = meter.create_counter(
            "sluice.flow_runs.transitions", *spec["sluice.flow_runs.transitions"]
        )
        self.start_latency = histogram(
            "sluice.flow_run.start.latency", *spec["sluice.flow_run.start.latency"]
        )
        self.start_lag = histogram("sluice.flow_run.start.lag", *spec["sluice.flow_run.start.lag"])
        self.request = histogram("sluice.rpc.server.duration", *spec["sluice.rpc.server.duration"])
        self.scheduler_lag = histogram("sluice.scheduler.lag", *spec["sluice.scheduler.lag"])
        self.missed = meter.create_counter(
            "sluice.runner.heartbeats.missed", *spec["sluice.runner.heartbeats.missed"]
        )
        for name, kind, unit, text in METRICS:
            if kind == "gauge":
                meter.create_observable_gauge(
                    name, callbacks=[_observer(name)], unit=unit, description=text
                )


def _observer(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def collect(options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        out: list[Observation] = []
        for source in list(_sources.get(name, ())):
            try:
                out.extend(Observation(value, dict(attrs)) for value, attrs in source())
            except Exception as exc:  # a gauge must never break a scrape
                log.debug("observing %s failed: %s", name, exc)
        return out

    return collect


# --- recording (each is one global read when metrics are off) ---------------------------
def metrics_enabled() -> bool:
    return _instruments is not None


def record_run_created(queue: str) -> None:
    if _instruments is not None:
        _instruments.created.add(1, {"queue": queue})


def record_transition(state_type: str) -> None:
    if _instruments is not None:
        _instruments.transitions.add(1, {"state": state_type})


def record_run_started(since_created: float, since_due: float, queue: str) -> None:
    """A run entered Running for the first time, ``since_*`` seconds after that."""
    if _instruments is not None:
        _instruments.start_latency.record(max(since_created, 0.0), {"queue": queue})
        _instruments.start_lag.record(max(since_due, 0.0), {"queue": queue})


def record_request(subject: str, decision: str, seconds: float) -> None:
    """One request served; ``decision`` is a propose decision, an error code or ``ok``."""
    if _instruments is not None:
        _instruments.request.record(seconds, {"subject": subject, "decision": decision})


def record_scheduler_lag(seconds: float, queue: str) -> None:
    if _instruments is not None:
        _instruments.scheduler_lag.record(max(seconds, 0.0), {"queue": queue})


def record_heartbeat_missed(runner: str) -> None:
    if _instruments is not None:
        _instruments.missed.add(1, {"runner": runner})


def observe(
    name: str, source: Callable[[], Iterable[tuple[float, Mapping[str, str]]]]
) -> Callable[[], None]:
    """Report gauge ``name`` from ``source`` at each collection; returns how to stop.

    ``source`` runs on the exporter's thread: it must only read (copy what it
    iterates) and be quick. Registering while metrics are off is allowed and free.
    """
    _sources.setdefault(name, []).append(source)

    def stop() -> None:
        sources = _sources.get(name, [])
        if source in sources:
            sources.remove(source)

    return stop


# --- set-up ------------------------------------------------------------------------------
def setup_metrics(
    service: str,
    environ: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    host: str | None = None,
) -> bool:
    """Configure metrics from ``OTEL_METRICS_EXPORTER``, plus a scrape endpoint on
    ``host:port`` when ``port`` is given (the services pass ``SLUICE_METRICS_PORT``
    or ``--metrics-port``). Only the first call of a process looks; returns
    :func:`metrics_enabled`. Never raises for a bad setting: it warns."""
    global _configured
    env = os.environ if environ is None else environ
    with _lock:
        if _configured:
            return metrics_enabled()
        _configured = True
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return False
        wanted = [n.strip().lower() for n in env.get("OTEL_METRICS_EXPORTER", "none").split(",")]
        wanted = [n for n in wanted if n and n != "none"]
        readers = [r for r in (_reader(n) for n in wanted if n != "prometheus") if r is not None]
        if port is not None or "prometheus" in wanted:
            scrape = _prometheus(port if port is not None else 9464, host)
            if scrape is not None:
                readers.append(scrape)
        if not readers:
            return False
        _install_locked(readers, env.get("OTEL_SERVICE_NAME") or service)
    log.info("metrics on: %s", ", ".join(wanted + ([f"scrape port {port}"] if port else [])))
    return True


def _reader(name: str) -> MetricReader | None:
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    if name == "otlp":
        try:
            module = importlib.import_module(
                "opentelemetry.exporter.otlp.proto.http.metric_exporter"
            )
        except ImportError:
            log.warning(
                "OTEL_METRICS_EXPORTER=otlp, but opentelemetry-exporter-otlp-proto-http is not "
                "installed (pip install 'sluice[otlp]'); metrics of this process are not exported"
            )
            return None
        return PeriodicExportingMetricReader(module.OTLPMetricExporter())
    log.warning("OTEL_METRICS_EXPORTER=%s is not supported (otlp, console, prometheus)", name)
    return None


def _prometheus(port: int, host: str | None) -> MetricReader | None:
    global _http
    try:
        import prometheus_client
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
    except ImportError:
        log.warning(
            "a metrics port is set, but opentelemetry-exporter-prometheus is not installed "
            "(pip install 'sluice[metrics]'); no scrape endpoint"
        )
        return None
    registry = prometheus_client.CollectorRegistry()  # ours alone: installs never collide
    reader = PrometheusMetricReader(registry=registry)
    try:
        _http, _ = prometheus_client.start_http_server(
            port, addr=host or "127.0.0.1", registry=registry
        )
    except OSError as exc:
        log.warning("the metrics scrape endpoint could not listen on port %d: %s", port, exc)
        return None
    return reader


def install_metrics(readers: Sequence[MetricReader], *, service: str = "sluice") -> None:
    """Record metrics into ``readers`` from now on, whatever the environment says (tests)."""
    global _configured
    with _lock:
        _shutdown_locked()
        _configured = True
        _install_locked(readers, service)


def _install_locked(readers: Sequence[MetricReader], service: str) -> None:
    global _provider, _instruments
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    provider = MeterProvider(
        metric_readers=list(readers), resource=Resource.create({SERVICE_NAME: service})
    )
    _provider = provider
    _instruments = _Instruments(provider.get_meter("sluice"))


def shutdown_metrics() -> None:
    """Stop recording and close the exporters and the scrape endpoint; the next
    :func:`setup_metrics` reads the environment again."""
    global _configured
    with _lock:
        _shutdown_locked()
        _configured = False


def _shutdown_locked() -> None:
    global _provider, _instruments, _http
    provider, _provider, _instruments = _provider, None, None
    http, _http = _http, None
    if http is not None:
        http.shutdown()
        http.server_close()
    if provider is not None:
        provider.shutdown()
