"""Where completed task results are cached, and the default cache key.

A task with ``cache_key_fn`` stores its value under the key that function
returns; a later run with the same key finds it and ends ``Cached`` without
calling the function. A store is anything with ``get``/``put`` below:

* :class:`MemoryCache` keeps the Python object itself. It never leaves the
  process, so nothing is serialised. The default runtime shares one instance
  per process.
* :class:`FolderCache` keeps one JSON file per key in a folder, so runs in
  other processes can share it. Values are encoded with msgspec's JSON
  encoder and read back as plain JSON types (a tuple comes back as a list, a
  datetime as a string). Nothing is pickled: unpickling a file another
  process wrote would let that process run code in ours. A value msgspec
  cannot encode is refused with :class:`~engine.exceptions.NotJSONable`.

Stores are called from executor threads, so they must be thread-safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from engine.exceptions import NotJSONable

if TYPE_CHECKING:
    from engine._core.context import TaskRunContext

__all__ = ["CacheEntry", "CacheStore", "FolderCache", "MemoryCache", "task_input_hash"]


class CacheEntry(msgspec.Struct, frozen=True):
    value: Any
    expires: datetime | None = None
    """After this instant the entry is ignored; ``None`` keeps it forever."""

    def fresh_at(self, now: datetime) -> bool:
        return self.expires is None or now < self.expires


class CacheStore(Protocol):
    def get(self, key: str, now: datetime) -> CacheEntry | None:
        """The entry under ``key`` if there is one that has not expired at ``now``."""
        ...

    def put(self, key: str, entry: CacheEntry) -> None:
        """Store ``entry`` under ``key``, replacing any older one.

        Raises NotJSONable when the store cannot keep this kind of value.
        """
        ...


class MemoryCache:
    """An in-process cache that keeps Python objects as they are."""

    def __init__(self) -> None:
        self._entries: dict[str, CacheEntry] = {}
        self._lock = threading.Lock()

    def get(self, key: str, now: datetime) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and not entry.fresh_at(now):
                del self._entries[key]  # expired entries are dropped lazily
                return None
            return entry

    def put(self, key: str, entry: CacheEntry) -> None:
        with self._lock:
            self._entries[key] = entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class _StoredEntry(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    expires: datetime | None = None
    value: msgspec.Raw


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_StoredEntry)


class FolderCache:
    """A cache of JSON files in ``folder`` (created on first write).

    File names are hashes of the keys, so any key string is safe. Writes are
    atomic (a temporary file renamed into place): a reader in another process
    sees the old entry or the new one, never half of one. An unreadable file
    counts as a miss.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / (hashlib.sha256(key.encode()).hexdigest() + ".json")

    def get(self, key: str, now: datetime) -> CacheEntry | None:
        try:
            stored = _decoder.decode(self._path(key).read_bytes())
        except (OSError, msgspec.DecodeError):
            return None
        if stored.key != key:  # a hash collision, however unlikely, is a miss
            return None
        entry = CacheEntry(value=msgspec.json.decode(stored.value), expires=stored.expires)
        return entry if entry.fresh_at(now) else None

    def put(self, key: str, entry: CacheEntry) -> None:
        try:
            raw = msgspec.Raw(_encoder.encode(entry.value))
        except (TypeError, ValueError, OverflowError) as exc:
            raise NotJSONable(
                f"FolderCache stores JSON only; a value of type {type(entry.value).__name__} "
                f"cannot be cached ({exc}). Return JSON-able data from the task or use "
                "MemoryCache.",
                details={"type": type(entry.value).__name__},
            ) from None
        data = _encoder.encode(_StoredEntry(key=key, expires=entry.expires, value=raw))
        import tempfile  # only a folder store needs it; keeps `import engine` light

        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self._path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


_sorted_encoder = msgspec.json.Encoder(order="sorted")


def task_input_hash(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """A cache key from the task's identity and its JSON-encoded inputs.

    Returns None (do not cache) when an input is not JSON-encodable: a key
    built from ``repr`` could make two different inputs share a value.
    """
    try:
        encoded = _sorted_encoder.encode(parameters)
    except (TypeError, ValueError, OverflowError):
        return None
    digest = hashlib.sha256(context.task.key.encode() + b"\0" + encoded).hexdigest()
    return f"{context.task.name}-{digest[:32]}"
