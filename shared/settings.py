"""Settings read from the environment, in one frozen record.

Every knob a user or operator can turn is a ``SLUICE_*`` variable listed here
with its default; nothing else in the code base reads ``os.environ`` for
configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = DEFAULT_NATS_URL
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    nats_creds: str | None = None
    """Path to a NATS ``.creds`` file (JWT + nkey seed)."""
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    nats_inbox_prefix: str | None = None
    """Where replies to this process arrive; default ``_INBOX.<user>`` with a
    user name (so a server can let each user read only its own inboxes), else
    ``_INBOX``."""
    home: Path = Path.home() / ".sluice"
    replicas: int = 1
    """JetStream replicas for buckets and streams (3 on a cluster)."""
    max_request_bytes: int = 1024 * 1024
    request_timeout: float = 10.0
    outage_grace: float = 30.0
    """Seconds a run's process keeps retrying a state the stack cannot take (a NATS
    node restarting, a cluster electing leaders) before the run fails."""
    events_max_age: float = 0.0
    """Seconds to keep run events (0: forever; the read model is rebuilt from them)."""
    logs_max_age: float = 7 * 24 * 3600.0
    dispatch_max_age: float = 24 * 3600.0
    """Seconds a dispatch item waits for a runner (a Late run is offered again)."""
    slot_lease: float = 10.0
    """Seconds a new concurrency slot lasts before its runner's first heartbeat renews it."""
    heartbeat_interval: float = 5.0
    """Seconds between a runner's heartbeats."""
    schedule_horizon_seconds: float = 3600.0
    """How far ahead the scheduler creates a schedule's runs (as Scheduled runs)."""
    schedule_min_runs: int = 3
    """…and at least this many upcoming runs per schedule, however far ahead."""
    schedule_catchup_seconds: float = 300.0
    """Default catch-up window: slots missed by longer (scheduler down) are skipped."""
    late_after_seconds: float = 15.0
    """A due run not started this many seconds after its time is marked Late."""
    dispatch_lead_seconds: float = 2.0
    """Offer a Scheduled run to runners this long before its time; a runner holds
    an early offer and starts the run on time (its prefetch window), so a burst
    of runs due together is stored ahead instead of at the due instant."""
    log_level: str = "INFO"
    bundle_limit_mb: float = 50.0
    """Largest project folder (files, before compression) a bundle may hold."""
    bundle_cache_mb: float = 1024.0
    """Unpacked bundles a runner keeps on its host before removing the least recently used."""
    metrics_port: int | None = None
    """Serve Prometheus metrics on this port (a service's ``--metrics-port``); None: off."""
    metrics_host: str = "127.0.0.1"
    """The address the metrics endpoint listens on (0.0.0.0 inside a container)."""

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)

        def get(name: str) -> str | None:
            value = env.get(f"SLUICE_{name}")
            return value if value not in (None, "") else None

        values: dict[str, object] = {}
        for field, var in [
            ("nats_url", "NATS_URL"),
            ("nats_user", "NATS_USER"),
            ("nats_password", "NATS_PASSWORD"),
            ("nats_token", "NATS_TOKEN"),
            ("nats_creds", "NATS_CREDS"),
            ("tls_ca", "NATS_TLS_CA"),
            ("tls_cert", "NATS_TLS_CERT"),
            ("tls_key", "NATS_TLS_KEY"),
            ("nats_inbox_prefix", "NATS_INBOX_PREFIX"),
            ("log_level", "LOG_LEVEL"),
            ("metrics_host", "METRICS_HOST"),
        ]:
            if (value := get(var)) is not None:
                values[field] = value
        if (home := get("HOME")) is not None:
            values["home"] = Path(home).expanduser()
        for field, var, conv in [
            ("replicas", "REPLICAS", int),
            ("max_request_bytes", "MAX_REQUEST_BYTES", int),
            ("request_timeout", "REQUEST_TIMEOUT", float),
            ("outage_grace", "OUTAGE_GRACE", float),
            ("events_max_age", "EVENTS_MAX_AGE", float),
            ("logs_max_age", "LOGS_MAX_AGE", float),
            ("dispatch_max_age", "DISPATCH_MAX_AGE", float),
            ("slot_lease", "SLOT_LEASE", float),
            ("heartbeat_interval", "HEARTBEAT_INTERVAL", float),
            ("schedule_horizon_seconds", "SCHEDULE_HORIZON_SECONDS", float),
            ("schedule_min_runs", "SCHEDULE_MIN_RUNS", int),
            ("schedule_catchup_seconds", "SCHEDULE_CATCHUP_SECONDS", float),
            ("late_after_seconds", "LATE_AFTER_SECONDS", float),
            ("dispatch_lead_seconds", "DISPATCH_LEAD_SECONDS", float),
            ("bundle_limit_mb", "BUNDLE_LIMIT_MB", float),
            ("bundle_cache_mb", "BUNDLE_CACHE_MB", float),
            ("metrics_port", "METRICS_PORT", int),
        ]:
            if (value := get(var)) is not None:
                try:
                    values[field] = conv(value)
                except ValueError:
                    raise ValueError(f"SLUICE_{var}={value!r} is not a valid number") from None
        return cls(**values)  # type: ignore[arg-type]
