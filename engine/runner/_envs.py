"""Virtual environments for bundles that declare requirements, built once per requirements.

A bundle may carry ``requirements.txt``, or a ``pyproject.toml`` whose
``[project] dependencies`` list them. A runner started with
``--install-requirements`` runs such a bundle in a virtualenv of its own:
``<SLUICE_HOME>/envs/<digest of the requirements and the Python version>``,
built on first use (``python -m venv`` then ``pip install``) and reused by
every bundle with the same requirements.

The environment reuses the runner's own installation for everything else: a
``.pth`` file puts the runner's site-packages (and the folder ``engine`` is
imported from) after the environment's own, so the run's process imports the
same Sluice as its runner while the bundle's requirements come first.

Building takes a file lock per environment, and the environment counts only
once its marker is written, last: two runs never build it twice, and a build
that died half-way is started again. A failed ``pip install`` raises
:class:`~engine.exceptions.BundleError` with the end of pip's output.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import anyio
import anyio.to_thread

import engine
from engine.exceptions import BundleError

__all__ = ["RequirementEnvs", "requirements_of"]

_DONE = ".sluice-env"
#: Lines of pip's output a failed install's message keeps.
TAIL_LINES = 15


def requirements_of(folder: Path) -> str | None:
    """The requirements a bundle declares (one per line), or None when it declares none."""
    text = folder / "requirements.txt"
    if text.is_file():
        return text.read_text(encoding="utf-8")
    project = folder / "pyproject.toml"
    if project.is_file():
        try:
            data = tomllib.loads(project.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise BundleError(f"the bundle's pyproject.toml cannot be read: {exc}") from None
        dependencies = data.get("project", {}).get("dependencies") or []
        if dependencies:
            return "\n".join(str(d) for d in dependencies) + "\n"
    return None


class RequirementEnvs:
    """Virtualenvs under ``root``, one per requirements digest (see the module docstring)."""

    def __init__(self, root: Path, python: str = sys.executable) -> None:
        self.root = root
        self.python = python

    def folder(self, requirements: str) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        digest = hashlib.sha256(f"{version}\n{requirements}".encode()).hexdigest()[:24]
        return self.root / digest

    async def environment(self, bundle: Path) -> Path | None:
        """The virtualenv for ``bundle``'s requirements, built if needed; None without any.

        Raises :class:`BundleError` when the requirements cannot be installed.
        Cancellation stops waiting; the build goes on in its worker thread and
        finishes (or fails) for the next run that needs it.
        """
        requirements = requirements_of(bundle)
        if requirements is None:
            return None
        env = self.folder(requirements)
        if (env / _DONE).is_file():
            return env
        return await anyio.to_thread.run_sync(
            self._build, env, requirements, bundle, abandon_on_cancel=True
        )

    def _build(self, env: Path, requirements: str, bundle: Path) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{env.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (env / _DONE).is_file():
                return env  # another run built it while we waited
            shutil.rmtree(env, ignore_errors=True)  # a build that died half-way
            self._run([self.python, "-m", "venv", str(env)], bundle, "creating the environment")
            (env / "requirements.txt").write_text(requirements)
            _share_runner_install(env)
            pip = [str(env / "bin" / "python"), "-m", "pip", "install"]
            pip += ["--disable-pip-version-check", "-r", str(env / "requirements.txt")]
            self._run(pip, bundle, "installing the bundle's requirements")
            (env / _DONE).write_text(requirements)
            return env

    @staticmethod
    def _run(argv: list[str], cwd: Path, what: str) -> None:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = (done.stdout + done.stderr).strip().splitlines()[-TAIL_LINES:]
            tail = "\n".join(lines)
            raise BundleError(f"{what} failed (exit code {done.returncode}):\n{tail}")


def _share_runner_install(env: Path) -> None:
    """Make the runner's own packages importable in ``env``, after its own."""
    own = next((env / "lib").glob("python3*/site-packages"))
    shared = [*site.getsitepackages(), str(Path(engine.__file__).resolve().parent.parent)]
    (own / "_sluice_runner.pth").write_text("\n".join(dict.fromkeys(shared)) + "\n")
