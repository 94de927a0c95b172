"""Deployment bundles in the ``sluice_bundles`` object store, and a runner's cache of them.

Uploading (clients: ``sluice deployment create --bundle``, ``bundle=True``):
the project folder is packed (:mod:`engine._stack.bundle_pack`) and stored
under its digest, once: an object already stored under that name is not
written again, since the name is the hash of the bytes.

Fetching (runners): :class:`BundleCache` keeps unpacked bundles under
``<SLUICE_HOME>/bundles/<hex>``. A bundle is fetched and unpacked once per
digest, under a file lock so two runs (or two runners sharing a home) never
unpack it twice. It is unpacked into a temporary folder beside the final one
and renamed into place, so a crash mid-unpack leaves no half folder that
looks complete; the next fetch removes the leftover. The cache is bounded:
past ``max_bytes``, the least recently used bundles that no run of this
process is using are removed.

nats-py errors are translated here: a missing object is :class:`BundleError`,
anything else :class:`~shared.errors.StackUnavailable`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import anyio
import anyio.to_thread
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from engine._stack.bundle_pack import DEFAULT_LIMIT, pack, unpack
from engine.exceptions import BundleError
from shared import names
from shared.errors import StackUnavailable
from shared.models import Bundle

__all__ = ["DEFAULT_CACHE_BYTES", "BundleCache", "delete_bundle", "list_bundles", "upload"]

#: Bytes of unpacked bundles a runner keeps before removing the least recently used (1 GiB).
DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024
_DONE = ".sluice-bundle"  # written last into an unpacked bundle: its size, and its use time


async def _store(js: JetStreamContext) -> ObjectStore:
    try:
        return await js.object_store(names.BUNDLES_BUCKET)
    except nats.js.errors.NotFoundError:
        raise BundleError(
            f"the {names.BUNDLES_BUCKET} object store does not exist; "
            "start the orchestrator once (it creates it)"
        ) from None
    except (nats.errors.Error, OSError) as exc:
        raise StackUnavailable(f"the bundle store cannot be reached: {exc}") from exc


async def upload(js: JetStreamContext, folder: Path, *, limit: int = DEFAULT_LIMIT) -> Bundle:
    """Pack ``folder`` and store it unless a bundle with its digest is stored already."""
    packed = await anyio.to_thread.run_sync(lambda: pack(folder, limit=limit))
    bundle = Bundle(digest=packed.digest, size=len(packed.data), files=packed.files)
    store = await _store(js)
    try:
        await store.get_info(packed.digest)
        return bundle  # same content, same name: nothing to write
    except nats.js.errors.ObjectNotFoundError:
        pass
    except (nats.errors.Error, OSError) as exc:
        raise StackUnavailable(f"the bundle store cannot be reached: {exc}") from exc
    try:
        await store.put(packed.digest, packed.data)
    except (nats.errors.Error, OSError) as exc:
        raise StackUnavailable(f"the bundle could not be stored: {exc}") from exc
    return bundle


async def list_bundles(js: JetStreamContext) -> list[tuple[str, int]]:
    """``(digest, size)`` of every stored bundle."""
    store = await _store(js)
    try:
        infos = await store.list()
    except nats.js.errors.NotFoundError:
        return []
    except (nats.errors.Error, OSError) as exc:
        raise StackUnavailable(f"the bundle store cannot be reached: {exc}") from exc
    return sorted((info.name, info.size or 0) for info in infos if not info.deleted)


async def delete_bundle(js: JetStreamContext, digest: str) -> None:
    store = await _store(js)
    try:
        await store.delete(digest)
    except nats.js.errors.NotFoundError:
        return
    except (nats.errors.Error, OSError) as exc:
        raise StackUnavailable(f"bundle {digest} could not be deleted: {exc}") from exc


class BundleCache:
    """Unpacked bundles on this host (see the module docstring)."""

    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        #: Digests runs of this process are using now; never evicted.
        self.in_use: dict[str, int] = {}

    def folder(self, digest: str) -> Path:
        return self.root / digest.removeprefix("sha256:")

    @contextlib.contextmanager
    def holding(self, bundle: Bundle | None) -> Iterator[None]:
        """Keep ``bundle`` (if any) from eviction while the block runs (a run's life)."""
        if bundle is None:
            yield
            return
        self.in_use[bundle.digest] = self.in_use.get(bundle.digest, 0) + 1
        try:
            yield
        finally:
            left = self.in_use[bundle.digest] - 1
            if left:
                self.in_use[bundle.digest] = left
            else:
                del self.in_use[bundle.digest]

    async def fetch(self, js: JetStreamContext, bundle: Bundle) -> Path:
        """The unpacked folder of ``bundle``: from the cache, else fetched and unpacked.

        Raises :class:`BundleError` (missing, corrupt) or
        :class:`~shared.errors.StackUnavailable`.
        """
        final = self.folder(bundle.digest)
        if (final / _DONE).is_file():
            _touch(final)
            return final
        lock = await anyio.to_thread.run_sync(self._lock, bundle.digest)
        try:
            if (final / _DONE).is_file():  # another run unpacked it while we waited
                _touch(final)
                return final
            data = await self._download(js, bundle.digest)
            await anyio.to_thread.run_sync(self._install, data, bundle.digest, final)
        finally:
            lock.close()  # closing the file releases its lock
        await anyio.to_thread.run_sync(self._evict, bundle.digest)
        return final

    async def _download(self, js: JetStreamContext, digest: str) -> bytes:
        store = await _store(js)
        try:
            result = await store.get(digest)
        except nats.js.errors.ObjectNotFoundError:
            raise BundleError(
                f"bundle {digest} is not in the {names.BUNDLES_BUCKET} store (was it removed "
                "by `sluice bundle gc`?); register the deployment again"
            ) from None
        except nats.js.errors.DigestMismatchError:
            raise BundleError(f"bundle {digest} is corrupt in the store") from None
        except (nats.errors.Error, OSError) as exc:
            raise StackUnavailable(f"bundle {digest} could not be fetched: {exc}") from exc
        return bytes(result.data or b"")

    def _lock(self, digest: str) -> IO[str]:
        """The digest's lock file, locked (blocking: called in a worker thread)."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / f".{digest.removeprefix('sha256:')}.lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except BaseException:
            handle.close()
            raise
        return handle

    def _install(self, data: bytes, digest: str, final: Path) -> None:
        hex_ = digest.removeprefix("sha256:")
        for leftover in self.root.glob(f".tmp-{hex_}-*"):  # a crash mid-unpack
            shutil.rmtree(leftover, ignore_errors=True)
        if final.exists():  # no marker: an interrupted install of an older layout
            shutil.rmtree(final, ignore_errors=True)
        staging = self.root / f".tmp-{hex_}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            size = unpack(data, digest, staging)
            (staging / _DONE).write_text(str(size))
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _evict(self, keep: str) -> None:
        entries = []
        for marker in self.root.glob(f"*/{_DONE}"):
            try:
                entries.append((marker.stat().st_mtime, int(marker.read_text()), marker.parent))
            except (OSError, ValueError):
                continue
        total = sum(size for _, size, _ in entries)
        protected = {self.folder(d) for d in (keep, *self.in_use)}
        for _, size, folder in sorted(entries):  # least recently used first
            if total <= self.max_bytes:
                break
            if folder in protected:
                continue
            # Remove the marker first: a half-removed folder is never taken as complete.
            with contextlib.suppress(OSError):
                (folder / _DONE).unlink()
            shutil.rmtree(folder, ignore_errors=True)
            total -= size


def _touch(folder: Path) -> None:
    now = time.time()
    with contextlib.suppress(OSError):
        os.utime(folder / _DONE, (now, now))
