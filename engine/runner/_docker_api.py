"""A small async client for the Docker Engine HTTP API: just what the Docker flow runner needs.

Owns the wire to the engine: where it listens (``unix:///path/to.sock`` or
``tcp://host:port``, from ``docker_host``, else ``DOCKER_HOST``, else the
default socket), one HTTP/1.1 request per connection (``Connection: close``,
so no pool to manage), JSON request bodies, and response bodies framed by
``Content-Length``, chunked transfer encoding, or the end of the connection.
It also splits the stdout/stderr stream Docker multiplexes for a container
without a TTY, and reads the progress stream of an image pull.

It knows nothing of flow runs. Every failure is raised as one of::

    DockerError            the engine answered with an error (``status``, ``message``)
    └── DockerUnreachable  nothing listens there, or the connection broke

No TLS and no SSH: an engine on ``tcp://`` must speak plain HTTP (for example
through an SSH tunnel); ``https://``, ``ssh://`` and ``npipe://`` hosts are
refused with a message that says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = [
    "DEFAULT_DOCKER_HOST",
    "DockerAPI",
    "DockerError",
    "DockerUnreachable",
    "Endpoint",
    "Response",
    "demultiplex",
    "endpoint",
]

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
#: Seconds to wait for a connection; a daemon that accepts nothing is as good as absent.
CONNECT_TIMEOUT = 10.0
_MAX_HEAD = 64 * 1024
_READ_SIZE = 64 * 1024
_NO_BODY = (204, 304)


class DockerError(Exception):
    """The Docker engine refused or failed a request; ``message`` is its own words."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class DockerUnreachable(DockerError):
    """No Docker engine answers where we looked, or it broke off the connection."""


@dataclass(frozen=True)
class Endpoint:
    """Where a Docker engine listens: a unix socket ``path`` or a TCP ``host``/``port``."""

    url: str
    path: str | None = None
    host: str = ""
    port: int = 0


def endpoint(docker_host: str | None = None, environ: Mapping[str, str] | None = None) -> Endpoint:
    """The engine's address: ``docker_host``, else ``$DOCKER_HOST``, else the default socket.

    Raises ValueError for a scheme this client cannot speak.
    """
    env = os.environ if environ is None else environ
    url = docker_host or env.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    parts = urlsplit(url)
    if parts.scheme == "unix" and parts.path:
        return Endpoint(url=url, path=parts.path)
    if parts.scheme in ("tcp", "http") and parts.hostname:
        return Endpoint(url=url, host=parts.hostname, port=parts.port or 2375)
    raise ValueError(
        f"cannot use Docker host {url!r}: give unix:///path/to/docker.sock or "
        "tcp://host:port (plain HTTP; TLS and ssh:// are not supported)"
    )


def _broken(where: Endpoint, exc: BaseException) -> DockerUnreachable:
    reason = str(exc) or type(exc).__name__
    return DockerUnreachable(f"the Docker engine at {where.url} broke off the connection: {reason}")


# Everything a socket read or write can raise, translated at this one boundary.
_STREAM_ERRORS = (
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.DelimiterNotFound,
    anyio.EndOfStream,
    anyio.IncompleteRead,
)


def _error_message(body: bytes, status: int) -> str:
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or body.decode(errors="replace").strip() or f"HTTP {status}")


class Response:
    """A response whose head has been read; its body is read chunk by chunk.

    Use it as an async context manager (or call :meth:`aclose`): it owns the connection.
    """

    def __init__(
        self,
        where: Endpoint,
        stream: anyio.abc.ByteStream,
        reader: BufferedByteReceiveStream,
        status: int,
        headers: dict[str, str],
    ) -> None:
        self.status = status
        self.headers = headers
        self._where = where
        self._stream = stream
        self._reader = reader
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._remaining: int | None = int(length) if length and not self._chunked else None
        self._done = status in _NO_BODY or self._remaining == 0

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self._stream)

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body, or None at its end. Raises DockerUnreachable."""
        if self._done:
            return None
        try:
            if self._chunked:
                return await self._next_transfer_chunk()
            if self._remaining is not None:
                data = await self._reader.receive(min(self._remaining, _READ_SIZE))
                self._remaining -= len(data)
                self._done = self._remaining <= 0
                return data
            try:  # neither length nor chunks: the body ends with the connection
                return await self._reader.receive(_READ_SIZE)
            except anyio.EndOfStream:
                self._done = True
                return None
        except _STREAM_ERRORS as exc:
            raise _broken(self._where, exc) from exc

    async def _next_transfer_chunk(self) -> bytes | None:
        line = await self._reader.receive_until(b"\r\n", 1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise DockerUnreachable(
                f"bad chunk size {line[:40]!r} from the Docker engine"
            ) from None
        if size == 0:
            while await self._reader.receive_until(b"\r\n", _MAX_HEAD):
                pass  # trailer fields: none we care about
            self._done = True
            return None
        data = await self._reader.receive_exactly(size)
        await self._reader.receive_until(b"\r\n", 2)
        return data

    async def read(self) -> bytes:
        """The rest of the body."""
        parts = [chunk async for chunk in self]
        return b"".join(parts)

    async def raise_for_status(self) -> None:
        """Raise DockerError with the engine's message if the status is 400 or above."""
        if self.status >= 400:
            raise DockerError(_error_message(await self.read(), self.status), self.status)


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {lines[0][:60]!r}")
    status = int(rest.split(" ", 1)[0])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


class DockerAPI:
    """Requests to one Docker engine; each opens (and closes) its own connection."""

    def __init__(self, docker_host: str | None = None) -> None:
        self.endpoint = endpoint(docker_host)

    @property
    def url(self) -> str:
        return self.endpoint.url

    async def _connect(self) -> anyio.abc.ByteStream:
        where = self.endpoint
        try:
            with anyio.fail_after(CONNECT_TIMEOUT):
                if where.path is not None:
                    return await anyio.connect_unix(where.path)
                return await anyio.connect_tcp(where.host, where.port)
        except (OSError, TimeoutError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise DockerUnreachable(
                f"cannot reach the Docker engine at {where.url} ({reason or 'timed out'}); "
                "is Docker running?"
            ) from exc

    async def open(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> Response:
        """Send a request and read the response's head; the caller closes the response.

        Raises DockerUnreachable. Cancellation closes the connection.
        """
        stream = await self._connect()
        where = self.endpoint
        host = "docker" if where.path is not None else f"{where.host}:{where.port}"
        payload = b"" if body is None else json.dumps(body).encode()
        target = path + (f"?{urlencode(query)}" if query else "")
        head = [f"{method} {target} HTTP/1.1", f"Host: {host}", "User-Agent: sluice"]
        head += ["Connection: close", "Accept: application/json"]
        if body is not None:
            head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(payload)}")
        try:
            await stream.send("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + payload)
            reader = BufferedByteReceiveStream(stream)
            status, headers = _parse_head(await reader.receive_until(b"\r\n\r\n", _MAX_HEAD))
            return Response(where, stream, reader, status, headers)
        except BaseException as exc:
            await anyio.aclose_forcefully(stream)
            if isinstance(exc, (*_STREAM_ERRORS, ValueError)):
                raise _broken(where, exc) from exc
            raise

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        """Send a request; return its JSON answer (None when empty).

        Raises DockerError with the engine's message for a status of 400 or above.
        """
        async with await self.open(method, path, query=query, body=body) as response:
            await response.raise_for_status()
            data = await response.read()
        try:
            return json.loads(data) if data.strip() else None
        except ValueError:
            raise DockerError(f"the Docker engine answered with non-JSON: {data[:80]!r}") from None

    async def image_exists(self, image: str) -> bool:
        try:
            await self.call("GET", f"/images/{quote(image, safe='/:@')}/json")
        except DockerError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def pull(self, image: str, tag: str) -> None:
        """Pull ``image:tag``. Docker reports a failed pull inside a 200 answer's
        progress stream, so the whole stream is read. Raises DockerError."""
        query = {"fromImage": image, "tag": tag}
        async with await self.open("POST", "/images/create", query=query) as response:
            await response.raise_for_status()
            pending = b""
            async for chunk in response:
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    _raise_pull_error(line)
            _raise_pull_error(pending)


def _raise_pull_error(line: bytes) -> None:
    if not line.strip():
        return
    try:
        message = json.loads(line)
    except ValueError:
        return  # a progress line we cannot read is still only progress
    if isinstance(message, dict) and message.get("error"):
        raise DockerError(str(message["error"]))


def demultiplex(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Take every whole frame off ``buffer`` (Docker's multiplexed stdout/stderr).

    A frame is an 8-byte header (stream: 1 stdout, 2 stderr; then a big-endian
    32-bit length) and that many bytes. An incomplete frame stays in ``buffer``.
    """
    frames: list[tuple[int, bytes]] = []
    while len(buffer) >= 8:
        size = int.from_bytes(buffer[4:8], "big")
        if len(buffer) < 8 + size:
            break
        frames.append((buffer[0], bytes(buffer[8 : 8 + size])))
        del buffer[: 8 + size]
    return frames
