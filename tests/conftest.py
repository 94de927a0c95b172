"""Fixtures: a real nats-server per test session, on a free port, data in a temp folder."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from engine.client import Client
from services.dev import NatsServer
from services.orchestrator import Orchestrator
from shared.settings import Settings

SEED = int(os.environ.get("SLUICE_TEST_SEED", random.randrange(2**32)))


def pytest_report_header(config: pytest.Config) -> str:
    return f"sluice random seed: {SEED} (replay with SLUICE_TEST_SEED={SEED})"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own: to stop, kill or restart, or to start bare."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(nats_server: NatsServer, tmp_path: Path) -> Settings:
    return Settings(nats_url=nats_server.url, home=tmp_path / "home", request_timeout=10.0)


@pytest.fixture
async def orchestrator(settings: Settings) -> AsyncIterator[Orchestrator]:
    async with Orchestrator(settings, grace=2.0) as orch:
        yield orch


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()


@pytest.fixture
async def client(settings: Settings, orchestrator: Orchestrator) -> AsyncIterator[Client]:
    async with Client(settings) as c:
        yield c


@pytest.fixture
def unique() -> str:
    """A short unique suffix, so tests sharing one server never collide."""
    return uuid.uuid4().hex[:8]
