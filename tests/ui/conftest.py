"""Fixtures for the web UI tests: a whole stack, a browser, and a place for screenshots.

The stack is ``python -m services.dev`` as a user starts it (nats-server,
every service, a runner serving the examples, and the web UI on a free
port), once per module. The browser is Debian's Chromium driven by
Playwright; nothing is downloaded, and the flags keep Chromium from
reaching for the network in the background.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, sync_playwright

from engine.sync import SyncClient
from services.dev import free_port
from shared.settings import Settings
from tests._procs import service_env, stop_dev_stack

CHROMIUM = Path(os.environ.get("SLUICE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "deployments.py"
SCREENSHOTS = Path(__file__).parent / "screenshots"
WAIT_MS = 60_000
"""How long a browser test waits for a condition (generous: shared, noisy machines)."""

_UI_LINE = re.compile(r"Sluice web UI: (http://\S+)")


@dataclass(frozen=True)
class Stack:
    settings: Settings
    url: str
    log: Path


def _wait_for_ui(proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sluice dev exited with {proc.returncode}:\n{log.read_text()}")
        if match := _UI_LINE.search(log.read_text(errors="replace")):
            return match.group(1)
        time.sleep(0.05)
    raise RuntimeError(f"sluice dev printed no web UI address:\n{log.read_text()}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("ui-stack")
    settings = Settings(
        nats_url=f"nats://127.0.0.1:{free_port()}", home=folder / "home", request_timeout=10.0
    )
    log = folder / "dev.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.dev", "--ui-port", "0"],
            env={**service_env(settings), "SLUICE_EXAMPLES": str(EXAMPLES)},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield Stack(settings=settings, url=_wait_for_ui(proc, log), log=log)
    finally:
        stop_dev_stack(proc, settings.home, timeout=30)


@pytest.fixture(scope="module")
def sync_client(stack: Stack) -> Iterator[SyncClient]:
    with SyncClient(stack.settings) as c:
        yield c


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); .ci/run installs it")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 860},
        )
        context.set_default_timeout(WAIT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser: BrowserContext, stack: Stack) -> Iterator[Page]:
    """A fresh tab; confirmation dialogs are accepted; a script error fails the test."""
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("dialog", lambda dialog: dialog.accept())
    yield tab
    tab.close()
    assert not errors, f"script errors on the page: {errors}"


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page picture for review under tests/ui/screenshots/."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def new_tag() -> str:
    """A tag of its own for a test's runs (they are told apart by it)."""
    return f"ui-{uuid.uuid4().hex[:8]}"


def run_state(page: Page) -> Locator:
    """The state shown on a run's page."""
    return page.locator("#run-detail h1 .state")
