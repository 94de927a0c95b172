"""Running one service as a process: options, logging, uvloop, health, and shutdown.

``python -m services.<name>`` goes through :func:`main`: ``--help`` describes
the service and the settings it reads, ``--check`` is its health check, and
otherwise :func:`run_service` runs it until SIGINT or SIGTERM.

Signals are not handled by callbacks that act; they end an ``async for`` over
``anyio.open_signal_receiver``, and leaving the service's context manager does
the orderly teardown (a runner stops taking work and settles its runs'
processes before the process exits).

Health: while a service runs it touches ``$SLUICE_HOME/health/<name>.alive``
every :data:`ALIVE_INTERVAL` seconds from its event loop. ``--check`` passes
when that file is fresh (the loop is not stuck) and NATS answers with this
process's settings and credentials, with the stack's ``flow_runs`` bucket in
place (the orchestrator has bootstrapped JetStream).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio

from shared import telemetry
from shared.errors import SluiceError
from shared.settings import Settings
from shared.starting import StartAbandoned, abandon_waits_on

log = logging.getLogger("sluice")

#: Seconds between touches of a running service's health file.
ALIVE_INTERVAL = 5.0
#: A health file older than this many intervals fails the check.
ALIVE_MISSES = 3

SETTINGS_HELP = """\
settings (environment):
  SLUICE_NATS_URL          NATS server(s), comma-separated (default nats://127.0.0.1:4222)
  SLUICE_NATS_USER, SLUICE_NATS_PASSWORD, SLUICE_NATS_TOKEN
                           credentials; SLUICE_NATS_CREDS: a .creds file
  SLUICE_NATS_TLS_CA, SLUICE_NATS_TLS_CERT, SLUICE_NATS_TLS_KEY
                           TLS (a tls:// URL turns TLS on too)
  SLUICE_HOME              data folder (default ~/.sluice)
  SLUICE_REPLICAS          JetStream replicas for streams and buckets (3 on a cluster)
  SLUICE_LOG_LEVEL         DEBUG, INFO (default), WARNING …
  OTEL_*                   OpenTelemetry exporter settings (standard variables)
"""


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def backend_options() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def health_file(settings: Settings, name: str) -> Path:
    return settings.home / "health" / f"{name.replace(' ', '-')}.alive"


async def _keep_alive(path: Path) -> None:
    file = anyio.Path(path)
    await file.parent.mkdir(parents=True, exist_ok=True)
    try:
        while True:
            await file.write_text(f"{os.getpid()}\n")
            await anyio.sleep(ALIVE_INTERVAL)
    finally:
        with anyio.CancelScope(shield=True):
            await file.unlink(missing_ok=True)


async def serve_until_signal(
    service: AbstractAsyncContextManager[Any], name: str, alive: Path | None = None
) -> None:
    """Run ``service`` until SIGINT or SIGTERM, answering them in every phase.

    A signal while the service waits for NATS, or for the stack (a runner
    waiting for its dispatch consumer), abandons the start: what was opened
    is closed, and the process exits. A signal during the rest of the start
    (seconds, once the stack answers) is acted on as soon as the service is
    ready. Once it runs, a signal leaves its context, which is the orderly
    shutdown, and a second one hurries that (a runner kills its runs instead
    of draining them). A service that calls its ``fail`` is stopped the same
    orderly way, and its error raised. A failed start raises its own exception,
    not a group around it.
    """
    failed: Exception | None = None
    stop = anyio.Event()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # ``watch`` outlives the service, so a second signal can hurry its shutdown.
        async with anyio.create_task_group() as watch:

            async def until_signal() -> None:
                async for signum in signals:
                    log.info("%s: received %s; shutting down", name, signal.Signals(signum).name)
                    stop.set()
                    break
                await _hurry_on_signal(service, name, signals)

            async def until_failed(wait_failed: Callable[[], Awaitable[None]]) -> None:
                await wait_failed()
                stop.set()

            watch.start_soon(until_signal)
            if (wait_failed := getattr(service, "wait_failed", None)) is not None:
                watch.start_soon(until_failed, wait_failed)
            try:
                # A signal while the service waits for NATS or the stack ends
                # that wait (StartAbandoned); what it had opened closes the normal way.
                with abandon_waits_on(stop):
                    async with service, anyio.create_task_group() as tg:
                        if alive is not None:
                            tg.start_soon(_keep_alive, alive)
                        log.info("%s ready", name)
                        await stop.wait()
                        tg.cancel_scope.cancel()
            except Exception as exc:  # raised below as it is, not in the group's wrapping
                if _abandoned(exc):
                    log.info("%s: stopped before it was ready", name)
                else:
                    failed = exc
            watch.cancel_scope.cancel()
    if failed is not None:
        raise failed


def _abandoned(exc: BaseException) -> bool:
    """StartAbandoned, or a group of nothing else (a wait given up in a task)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_abandoned(inner) for inner in exc.exceptions)
    return isinstance(exc, StartAbandoned)


async def _hurry_on_signal(service: Any, name: str, signals: Any) -> None:
    """A second signal while shutting down: a service that drains (the runner) stops now."""
    async for signum in signals:
        log.info("%s: received %s again; stopping now", name, signal.Signals(signum).name)
        hurry = getattr(service, "hurry", None)
        if hurry is not None:
            await hurry()


def run_service(name: str, factory: Callable[[Settings], AbstractAsyncContextManager[Any]]) -> None:
    """Run a service as this process. A SluiceError that ends it (a port in
    use, credentials refused) is one line, ``error: <message>``, and exit
    status 1, as the CLI prints it; not a traceback."""
    settings = Settings.from_env()
    setup_logging(settings.log_level)
    # A second Ctrl-C during shutdown interrupts it; exit quietly then too.
    with contextlib.suppress(KeyboardInterrupt):
        try:
            anyio.run(
                serve_until_signal,
                factory(settings),
                name,
                health_file(settings, name),
                backend_options=backend_options(),
            )
        except SluiceError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            sys.exit(1)
        except BaseExceptionGroup as group:
            errors = _sluice_errors(group)
            if errors is None:
                raise
            for error in errors:
                print(f"error: {error.message}", file=sys.stderr)
            sys.exit(1)


def _sluice_errors(group: BaseExceptionGroup[BaseException]) -> list[SluiceError] | None:
    """The leaves of ``group`` when all are SluiceErrors, else None (a bug: re-raise)."""
    leaves: list[SluiceError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = _sluice_errors(exc)
            if inner is None:
                return None
            leaves += inner
        elif isinstance(exc, SluiceError):
            leaves.append(exc)
        else:
            return None
    return leaves


# --- the command line -------------------------------------------------------------------
def parser(module: str, description: str | None) -> argparse.ArgumentParser:
    """The options every service takes; a service adds its own to the result."""
    p = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=description,
        epilog=SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="health check: exit 0 if this service runs here and NATS answers, else 1",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (default: SLUICE_METRICS_PORT; off "
        "without either); needs the 'metrics' extra",
    )
    return p


def main(
    name: str,
    factory: Callable[[Settings, argparse.Namespace], AbstractAsyncContextManager[Any]],
    options: argparse.ArgumentParser,
    argv: list[str] | None = None,
) -> None:
    """Parse the command line, then run the service or its health check."""
    args = options.parse_args(argv)
    if args.check:
        sys.exit(check(name, Settings.from_env()))
    # Before any client does it under its own name (a no-op without OTEL_* set).
    service = "sluice-" + name.removeprefix("sluice ").replace("_", "-")
    telemetry.setup(service)
    settings = Settings.from_env()
    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    telemetry.setup_metrics(service, port=port, host=settings.metrics_host)  # off unless asked
    try:
        run_service(name, lambda settings: factory(settings, args))
    finally:
        telemetry.shutdown_metrics()  # the last export, and the scrape port closed


def check(name: str, settings: Settings) -> int:
    """The health check: 0 when healthy; otherwise 1 with the reason on stderr."""
    path = health_file(settings, name)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        print(f"unhealthy: {name} is not running here (no {path})", file=sys.stderr)
        return 1
    if age > ALIVE_INTERVAL * ALIVE_MISSES:
        print(f"unhealthy: {name} has not been alive for {age:.0f}s", file=sys.stderr)
        return 1
    try:
        anyio.run(_check_nats, settings)
    except Exception as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


async def _check_nats(settings: Settings) -> None:
    import nats.js.errors

    from shared import names
    from shared.connection import connect

    nc = await connect(settings, name="sluice-health-check", wait=5.0)
    try:
        with anyio.fail_after(5.0):
            await nc.jetstream().key_value(names.FLOW_RUNS_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        raise RuntimeError("the flow_runs bucket does not exist yet") from None
    except TimeoutError:
        raise RuntimeError("JetStream did not answer within 5s") from None
    finally:
        await nc.close()
