"""Fixtures of the real-Docker stage (``just test-docker``).

Every test under ``tests/docker/`` is marked ``docker``: the main run
(``just check``) leaves them out, and ``just test-docker`` runs only them. They
need a Docker engine that answers ``docker info``. Without one they are
skipped, unless ``SLUICE_REQUIRE_DOCKER=1`` (what ``just test-docker`` sets
once it has an engine), where a missing engine is a failure.

The project's image is built once per session from this checkout, with the tag
:func:`engine.docker_runner.default_image` names, so the containers run the code
under test. Builds use the host's network (``--network host``): the engine runs
with ``--ip-forward=false`` in CI, and no container needs anything off this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.docker_runner import default_image

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.docker)


def docker(*args: str, timeout: float = 300, check: bool = True) -> str:
    """Run the docker CLI; its stdout. Raises CalledProcessError (with stderr) on failure."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def _engine_answers() -> str | None:
    """None when ``docker info`` works, else why not."""
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info: {exc}"
    return None if done.returncode == 0 else f"docker info: {done.stderr.strip()[-300:]}"


@pytest.fixture(scope="session")
def docker_engine() -> None:
    reason = _engine_answers()
    if reason is None:
        return
    if os.environ.get("SLUICE_REQUIRE_DOCKER") == "1":
        pytest.fail(f"SLUICE_REQUIRE_DOCKER=1 but no Docker engine answers: {reason}")
    pytest.skip(f"no Docker engine here ({reason})")


@pytest.fixture(scope="session")
def sluice_image(docker_engine: None) -> Iterator[str]:
    """The project's image, built from this checkout and tagged as the default."""
    image = default_image()
    started = time.monotonic()
    done = subprocess.run(
        ["docker", "build", "-q", "--network", "host", "-f", "deploy/Dockerfile", "-t", image, "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    assert done.returncode == 0, done.stderr
    print(f"built {image} in {time.monotonic() - started:.1f} s")
    yield image


def labelled(label: str) -> list[str]:
    """Ids of every container (running or not) with ``label`` (``key=value``)."""
    return docker("ps", "-aq", "--filter", f"label={label}").split()


def shared_folder(tmp_path: Path, name: str) -> Path:
    """A folder a container's unprivileged user (uid 10001) can read, for bind mounts."""
    folder = tmp_path / name
    folder.mkdir()
    for path in (tmp_path, folder):
        path.chmod(0o755)
    return folder
