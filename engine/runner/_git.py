"""Flow code from a git repository: ``source="git+URL@REF"`` on a deployment.

A runner keeps one mirror clone per repository URL under
``<SLUICE_HOME>/git/repos``, fetches it before each run, resolves the ref
(a branch, a tag or a commit) to a commit, and exports that commit's tree once
into ``<SLUICE_HOME>/git/trees/<commit>``, where the run starts. A branch
therefore runs its newest commit at each run, and a run that has started keeps
its tree.

Credentials never travel with the deployment: a URL that carries a password
is refused when the deployment is built. git finds them as it always does: a
credential helper, ``~/.git-credentials``, an SSH agent or key, or
``GIT_ASKPASS``/``GIT_SSH_COMMAND`` in the runner's environment.

Fetching and exporting take a file lock per repository, and a tree counts
only once its marker is written, after a rename into place.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import anyio
import anyio.to_thread

from engine.deployments import parse_source
from engine.exceptions import BundleError

__all__ = ["GitSources"]

_DONE = ".sluice-tree"
#: Seconds one git command may take before the run crashes saying so.
GIT_TIMEOUT = 600.0


class GitSources:
    """Mirrors and exported trees under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def checkout(self, source: str) -> Path:
        """The folder holding ``source``'s ref as of now. Raises :class:`BundleError`."""
        try:
            url, ref = parse_source(source)
        except ValueError as exc:
            raise BundleError(str(exc)) from None
        return await anyio.to_thread.run_sync(self._checkout, url, ref, abandon_on_cancel=True)

    def _checkout(self, url: str, ref: str) -> Path:
        repos, trees = self.root / "repos", self.root / "trees"
        repos.mkdir(parents=True, exist_ok=True)
        trees.mkdir(parents=True, exist_ok=True)
        repo = repos / hashlib.sha256(url.encode()).hexdigest()[:24]
        with open(repos / f".{repo.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (repo / "HEAD").is_file():
                _git(["fetch", "--prune", "--quiet", "origin"], repo, f"fetching {url}")
            else:
                staging = repos / f".tmp-{repo.name}-{uuid.uuid4().hex[:8]}"
                try:
                    _git(
                        ["clone", "--mirror", "--quiet", url, str(staging)], repos, f"cloning {url}"
                    )
                    shutil.rmtree(repo, ignore_errors=True)
                    os.rename(staging, repo)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
            try:
                commit = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], repo, "")
            except BundleError:
                raise BundleError(f"{url} has no branch, tag or commit named {ref!r}") from None
            commit = commit.strip()
            tree = trees / commit
            if not (tree / _DONE).is_file():
                archive = _git_raw(["archive", "--format=tar", commit], repo, "exporting")
                staging = trees / f".tmp-{commit}-{uuid.uuid4().hex[:8]}"
                try:
                    staging.mkdir()
                    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                        tar.extractall(staging, filter="data")
                    (staging / _DONE).write_text(f"{url}@{ref}\n")
                    shutil.rmtree(tree, ignore_errors=True)
                    os.rename(staging, tree)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
            return tree


def _git(args: list[str], cwd: Path, what: str) -> str:
    return _git_raw(args, cwd, what).decode()


def _git_raw(args: list[str], cwd: Path, what: str) -> bytes:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # never wait for a password on a tty
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, timeout=GIT_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise BundleError(
            "this runner has no git command; install git to run git sources"
        ) from None
    except subprocess.TimeoutExpired:
        raise BundleError(f"{what} took longer than {GIT_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-10:]
        raise BundleError(f"{what} failed (git exit code {done.returncode}) " + "\n".join(tail))
    return bytes(done.stdout)
