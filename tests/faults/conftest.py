"""Fixtures of the fault tests: a nats-server of each test's own, service processes, a seed."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.dev import NatsServer
from shared.settings import Settings

from ..conftest import SEED
from ._history import History
from ._stack import Stack, fast_settings


@pytest.fixture
def seed() -> int:
    """The random seed of this test; a failure message names it for replay."""
    print(f"seed {SEED} (replay with SLUICE_TEST_SEED={SEED})")
    return SEED


@pytest.fixture
def rng(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.fixture
def own_nats(own_server: NatsServer) -> NatsServer:
    """A nats-server of this test's own, to kill and restart (``tests/conftest.py``)."""
    return own_server


@pytest.fixture
def fast(own_nats: NatsServer, tmp_path: Path) -> Settings:
    return fast_settings(own_nats.url, tmp_path / "home")


@pytest.fixture
def stack(fast: Settings, tmp_path: Path) -> Iterator[Stack]:
    logs = tmp_path / "logs"
    logs.mkdir()
    s = Stack(fast, logs)
    yield s
    s.stop_all()


@pytest.fixture
def history() -> History:
    return History()
