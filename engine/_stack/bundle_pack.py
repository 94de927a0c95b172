"""Packing a project folder into a bundle, and unpacking one: files only, no network.

A bundle is a gzipped tar of a flow's project folder, built so that the same
files give the same bytes (sorted entries, zeroed times and owners, modes
reduced to 0644/0755), and named by the SHA-256 of those bytes. So
registering unchanged code again makes no new object, and a changed file
makes a new digest.

What goes in: every regular file under the folder, except what its
``.gitignore`` and ``.sluiceignore`` (at the folder's top, in git's pattern
syntax) leave out, and always ``.git``, ``.venv``, ``__pycache__`` and
``*.pyc``. A symbolic link is followed when it points inside the folder and
refused when it points outside, so a bundle never carries a file from
elsewhere on the machine.

Unpacking checks the digest before reading the archive and extracts with the
``data`` filter: no absolute paths, no ``..``, no links out, no devices.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pathspec

from engine.exceptions import BundleError

__all__ = [
    "ALWAYS_LEFT_OUT",
    "DEFAULT_LIMIT",
    "Packed",
    "digest_of",
    "pack",
    "selected_files",
    "unpack",
]

#: Bytes of files a bundle may hold before packing refuses (50 MiB).
DEFAULT_LIMIT = 50 * 1024 * 1024
#: Left out of every bundle, whatever the ignore files say.
ALWAYS_LEFT_OUT = (".git/", ".venv/", "__pycache__/", "*.pyc", ".sluice/")
IGNORE_FILES = (".gitignore", ".sluiceignore")


@dataclass(frozen=True)
class Packed:
    data: bytes
    digest: str
    """``sha256:<hex>`` of ``data``."""
    files: int
    content_bytes: int
    """Bytes of the files before compression."""


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _spec(folder: Path) -> pathspec.PathSpec:
    lines = list(ALWAYS_LEFT_OUT)
    for name in IGNORE_FILES:
        ignore = folder / name
        if ignore.is_file():
            lines += ignore.read_text(encoding="utf-8", errors="replace").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def selected_files(folder: Path) -> list[tuple[str, Path]]:
    """``(name in the bundle, file on disk)`` for every file that goes in, sorted.

    Raises :class:`BundleError` for a link that points outside ``folder``.
    """
    top = folder.resolve()
    if not top.is_dir():
        raise BundleError(f"cannot bundle {folder}: it is not a folder")
    spec = _spec(top)
    chosen: list[tuple[str, Path]] = []
    for here, dirs, files in os.walk(top):
        rel_dir = Path(here).relative_to(top)
        kept = []
        for name in sorted(dirs):
            rel = (rel_dir / name).as_posix()
            if spec.match_file(rel + "/"):
                continue
            _inside(top, Path(here) / name, rel)
            kept.append(name)
        dirs[:] = kept  # os.walk does not follow linked folders; inside ones are refused below
        for name in sorted(files):
            rel = (rel_dir / name).as_posix()
            if spec.match_file(rel):
                continue
            path = Path(here) / name
            _inside(top, path, rel)
            if path.is_file():
                chosen.append((rel, path))
    return sorted(chosen)


def _inside(top: Path, path: Path, rel: str) -> None:
    if not path.is_symlink():
        return
    target = path.resolve()
    if target != top and top not in target.parents:
        raise BundleError(
            f"cannot bundle {top}: {rel} links to {target}, outside the project folder; "
            "copy the file in or leave it out with .sluiceignore"
        )
    if target.is_dir():
        raise BundleError(
            f"cannot bundle {top}: {rel} links to a folder; bundles hold files and real folders"
        )


def pack(folder: Path, *, limit: int = DEFAULT_LIMIT) -> Packed:
    """The bundle of ``folder``. Raises :class:`BundleError` past ``limit`` bytes of files."""
    files = selected_files(folder)
    total = sum(path.stat().st_size for _, path in files)
    if total > limit:
        biggest = sorted(files, key=lambda item: item[1].stat().st_size, reverse=True)[:3]
        names = ", ".join(f"{rel} ({_mib(path.stat().st_size)})" for rel, path in biggest)
        raise BundleError(
            f"cannot bundle {folder}: its files come to {_mib(total)}, over the limit of "
            f"{_mib(limit)} (largest: {names}). Leave files out with .sluiceignore, raise the "
            "limit (SLUICE_BUNDLE_LIMIT_MB), or ship code this large in a Docker image"
        )
    raw = io.BytesIO()
    # mtime=0 and no file name in the gzip header: the same files give the same bytes.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel, path in files:
            content = path.read_bytes()
            info = tarfile.TarInfo(rel)
            info.size = len(content)
            info.mtime = 0
            info.mode = 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644
            tar.addfile(info, io.BytesIO(content))
    data = raw.getvalue()
    return Packed(data=data, digest=digest_of(data), files=len(files), content_bytes=total)


def unpack(data: bytes, digest: str, into: Path) -> int:
    """Check ``data`` against ``digest``, then extract it into the new folder ``into``.

    Returns the bytes extracted. Raises :class:`BundleError` when the bytes do
    not match the digest or the archive is not a bundle.
    """
    actual = digest_of(data)
    if actual != digest:
        raise BundleError(f"bundle {digest} is corrupt: its bytes hash to {actual}")
    into.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"bundle {digest} could not be unpacked: {exc}") from exc
    return sum(m.size for m in members if m.isfile())


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"
