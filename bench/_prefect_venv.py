"""The Prefect 3 virtualenv the comparison runs Prefect's own code from.

    python -m bench._prefect_venv        # create bench/.prefect-venv if missing, print its version

It lives in ``bench/.prefect-venv`` (git-ignored, excluded from ruff), apart
from Sluice's environment, so neither project's pins leak into the other.
The newest 3.x that installs from the configured package index wins: the
versions are listed newest first with pip, and each is tried with
:data:`CONSTRAINTS` until one installs (a release whose dependencies the index
lacks fails in a few seconds). Nothing is installed when the venv already
imports prefect.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from ._harness import REPO

VENV = REPO / "bench" / ".prefect-venv"
PYTHON = VENV / "bin" / "python"

CONSTRAINTS = ("fastapi<0.151",)
"""Prefect 3.8 declares ``fastapi`` unbounded, and the newest fastapi breaks its server."""

MAX_TRIES = 8


def installed_version() -> str | None:
    """The version of prefect in the venv, or ``None`` when there is none that imports."""
    if not PYTHON.exists():
        return None
    out = subprocess.run(
        [str(PYTHON), "-c", "import importlib.metadata as m; print(m.version('prefect'))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def candidate_versions() -> list[str]:
    """Prefect 3.x releases the index offers, newest first."""
    out = subprocess.run(
        [str(PYTHON), "-m", "pip", "index", "versions", "prefect"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    match = re.search(r"Available versions:\s*(.+)", out.stdout)
    if not match:
        raise RuntimeError(f"pip could not list prefect's versions:\n{out.stdout}{out.stderr}")
    versions = [v.strip() for v in match.group(1).split(",")]
    return [v for v in versions if re.fullmatch(r"3\.\d+\.\d+", v)]


def ensure(log: object = print) -> str:
    """Create the venv and install the newest installable Prefect 3; its version.

    Raises ``RuntimeError`` when no 3.x release installs.
    """
    version = installed_version()
    if version is not None:
        return version
    say = log if callable(log) else print
    say(f"creating {VENV} (Prefect 3, once)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\n".join(CONSTRAINTS) + "\n")
    failures: list[str] = []
    for candidate in candidate_versions()[:MAX_TRIES]:
        say(f"  trying prefect=={candidate} (constraints: {', '.join(CONSTRAINTS)})")
        out = subprocess.run(
            [
                str(PYTHON),
                "-m",
                "pip",
                "install",
                "-q",
                f"prefect=={candidate}",
                "-c",
                constraints.name,
            ],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if out.returncode == 0:
            Path(constraints.name).unlink(missing_ok=True)
            return installed_version() or candidate
        reason = [ln for ln in out.stderr.splitlines() if ln.startswith("ERROR")][-1:]
        failures.append(f"{candidate}: {reason[0] if reason else 'failed'}")
        say(f"  {failures[-1]}")
    Path(constraints.name).unlink(missing_ok=True)
    raise RuntimeError("no Prefect 3 release installs here:\n" + "\n".join(failures))


def details() -> dict[str, str]:
    """Versions of the packages that decide Prefect's speed, from the venv."""
    script = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    )
    out = subprocess.run(
        [str(PYTHON), "-c", script, "prefect", "fastapi", "pydantic", "sqlalchemy", "uvicorn"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(out.stdout) if out.returncode == 0 else {}


if __name__ == "__main__":
    print(ensure())
