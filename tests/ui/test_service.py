"""The UI service in-process against the test session's nats-server (no browser).

Checks what a browser cannot see: the service starts on a free port, answers
pages, streams run changes as server-sent events, and stops promptly while
a stream is still open.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import anyio
import pytest

from engine.client import Client
from services.orchestrator import Orchestrator
from services.ui import UIService
from shared.messages import RegisterDeployment
from shared.settings import Settings

pytestmark = pytest.mark.anyio


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode()


def _wait_for_event(url: str, *words: str) -> str:
    """Read an event stream until a data line holding every one of ``words`` arrives."""
    with urllib.request.urlopen(url, timeout=60) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        for raw in stream:
            line = raw.decode()
            if line.startswith("data:") and all(w in line for w in words):
                return line
    raise AssertionError(f"the stream ended without {words}")


async def test_pages_and_a_live_stream(
    settings: Settings, orchestrator: Orchestrator, client: Client, unique: str
) -> None:
    await client.register_deployment(RegisterDeployment(name=unique, flow_name="ui-svc"))
    async with UIService(settings, port=0, grace=1.0) as ui:
        run = await client.create_flow_run(f"ui-svc/{unique}", tags=[unique])
        status, html = await anyio.to_thread.run_sync(_get, f"{ui.url}/runs?tag={unique}")
        assert status == 200 and run.name in html
        status, html = await anyio.to_thread.run_sync(_get, f"{ui.url}/runs/{run.id}")
        assert status == 200 and "Not started:" in html  # and why

        async with anyio.create_task_group() as tg:
            stream_url = f"{ui.url}/runs/live?tag={unique}"
            tg.start_soon(
                anyio.to_thread.run_sync, _wait_for_event, stream_url, run.id, "Cancelled"
            )
            await client.cancel_flow_run(run.id)  # a change the stream must carry

        # Leaving the service with a stream open: it ends the stream and stops.
        opened = await anyio.to_thread.run_sync(
            lambda: urllib.request.urlopen(stream_url, timeout=60)
        )
    with anyio.fail_after(30):
        await anyio.to_thread.run_sync(opened.read)  # returns once the server ended it
    opened.close()


def test_a_busy_port_is_a_clear_error(settings: Settings) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {"SLUICE_NATS_URL": settings.nats_url, "PATH": "/usr/bin:/bin"}
        done = subprocess.run(
            [sys.executable, "-m", "services.ui", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr


async def test_the_stack_status_says_when_the_orchestrator_does_not_answer(
    settings: Settings, unique: str
) -> None:
    import json
    import urllib.error

    def status(url: str) -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())

    # NATS is there, the orchestrator is not: pages would be stale.
    async with UIService(settings, port=0, grace=1.0) as ui:
        code, body = await anyio.to_thread.run_sync(status, f"{ui.url}/stack")
        assert code == 503 and body["up"] is False and body["problem"]
    async with Orchestrator(settings), UIService(settings, port=0, grace=1.0) as ui:
        code, body = await anyio.to_thread.run_sync(status, f"{ui.url}/stack")
        assert code == 200 and body == {"up": True, "problem": None}
