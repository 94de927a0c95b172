"""Helpers for tests that run Sluice services as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

from engine.client import Client
from shared.errors import StackUnavailable
from shared.settings import Settings


def service_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SLUICE_NATS_URL=settings.nats_url,
        SLUICE_HOME=str(settings.home),
        SLUICE_LOG_LEVEL="WARNING",
    )
    return env


def start_service(
    module: str, settings: Settings, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    """``python -m module`` with the settings (and any ``env`` on top), logging to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env={**service_env(settings), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def wait_until_serving(settings: Settings, proc: subprocess.Popen[bytes]) -> None:
    """Return once the orchestrator answers a request (no fixed sleeps)."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}")
        try:
            async with Client(settings, connect_timeout=2) as c:
                await c.list_deployments(limit=1)
                return
        except StackUnavailable:
            await anyio.sleep(0.05)


def nats_server_of(home: Path) -> int | None:
    """The pid of the nats-server ``sluice dev`` runs under ``home``, if one runs
    (one killed and not yet reaped by the stack does not count)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        running = stat.rsplit(")", 1)[-1].split()[0] != "Z"
        ours = any(str(home).encode() in a for a in argv)
        if argv and argv[0].endswith(b"nats-server") and running and ours:
            return int(entry.name)
    return None


def stop_dev_stack(proc: subprocess.Popen[Any], home: Path, timeout: float = 60.0) -> None:
    """Stop a `sluice dev` process as Ctrl-C does; SIGKILL only after ``timeout``.
    Its nats-server runs in a session of its own, so a stack killed before it
    stopped the server would leave it running: that one is killed too."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if (left := nats_server_of(home)) is not None:
        os.kill(left, signal.SIGKILL)
