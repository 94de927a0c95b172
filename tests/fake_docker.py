"""A fake Docker engine for the Docker flow runner's tests.

The handful of Engine API endpoints the runner uses (image inspect and pull,
create, network connect, wait, start, logs, stop, remove), answered from
memory over HTTP/1.1 on a unix socket in the test's own process — enough to
prove the runner's HTTP client and the container lifecycle without Docker.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

#: The image the fake engine has without pulling.
IMAGE = "sluice-test:1"


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


@dataclass
class FakeContainer:
    id: str
    name: str
    body: dict[str, Any]
    exit_code: int | None
    output: list[tuple[int, bytes]]
    status: int | None = None
    exited: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class FakeDocker:
    """The handful of Docker endpoints the runner uses, answered from memory.

    The next container started exits with ``exit_code`` after writing
    ``output`` (``exit_code=None``: it runs until stopped). Like Docker, a
    wait answers its head at once and its body at the exit, a failed pull is
    a 200 whose stream carries the error, and an auto-removed container is
    gone once it has exited.
    """

    url: str
    images: set[str] = field(default_factory=lambda: {IMAGE})
    pullable: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=lambda: {"bridge", "extra"})
    containers: dict[str, FakeContainer] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    queries: dict[str, dict[str, str]] = field(default_factory=dict)
    exit_code: int | None = 0
    output: list[tuple[int, bytes]] = field(default_factory=list)

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        async with stream:
            # The client may hang up first, as a cancelled wait does.
            with contextlib.suppress(
                anyio.BrokenResourceError, anyio.EndOfStream, anyio.IncompleteRead
            ):
                await self._answer(stream, BufferedByteReceiveStream(stream))

    async def _answer(
        self, stream: anyio.abc.ByteStream, reader: BufferedByteReceiveStream
    ) -> None:
        head = (await reader.receive_until(b"\r\n\r\n", 65536)).decode()
        method, target, _ = head.split("\r\n")[0].split(" ")
        headers = dict(line.lower().split(": ", 1) for line in head.split("\r\n")[1:])
        length = int(headers.get("content-length", "0"))
        body = json.loads(await reader.receive_exactly(length)) if length else None
        url = urlsplit(target)
        path, query = unquote(url.path), {k: v[0] for k, v in parse_qs(url.query).items()}
        self.calls.append(f"{method} {path}")
        self.queries[f"{method} {path}"] = query
        answer = Answer(stream)
        if m := re.fullmatch(r"/images/(.+)/json", path):
            if m[1] in self.images:
                return await answer.json(200, {"Id": "sha256:1"})
            return await answer.error(404, f"No such image: {m[1]}")
        if path == "/images/create":
            return await self._pull(answer, f"{query['fromImage']}:{query['tag']}")
        if path == "/containers/create":
            return await self._create(answer, query["name"], body)
        if m := re.fullmatch(r"/networks/(.+)/connect", path):
            if m[1] not in self.networks:
                return await answer.error(404, f"network {m[1]} not found")
            return await answer.json(200, None)
        m = re.fullmatch(r"/containers/(\w+)(/\w+)?", path)
        assert m, path
        container = self.containers.get(m[1])
        if container is None:
            return await answer.error(404, f"No such container: {m[1]}")
        action = {
            "/wait": self._wait,
            "/start": self._start,
            "/logs": self._logs,
            "/stop": self._stop,
            None: self._remove,
        }[m[2]]
        await action(answer, container)

    async def _pull(self, answer: Answer, image: str) -> None:
        await answer.chunked_head()
        await answer.chunk(b'{"status":"Pulling from library"}\r\n{"status":"Down')
        if image in self.pullable:
            self.images.add(image)
            await answer.chunk(b'loading"}\r\n{"status":"Status: Downloaded newer image"}\r\n')
        else:
            await answer.chunk(b'loading"}\r\n')
            await answer.chunk(b'{"errorDetail":{"message":"denied"},"error":"pull access denied"}')
        await answer.end()

    async def _create(self, answer: Answer, name: str, body: dict[str, Any]) -> None:
        if body["Image"] not in self.images:
            return await answer.error(404, f"No such image: {body['Image']}")
        if any(c.name == name for c in self.containers.values()):
            return await answer.error(409, f'Conflict. The container name "/{name}" is in use')
        ident = uuid.uuid4().hex * 2
        self.containers[ident] = FakeContainer(ident, name, body, self.exit_code, self.output)
        await answer.json(201, {"Id": ident, "Warnings": []})

    def _exit(self, container: FakeContainer, code: int) -> None:
        container.status = code
        container.exited.set()
        if container.body["HostConfig"]["AutoRemove"]:
            del self.containers[container.id]

    async def _wait(self, answer: Answer, container: FakeContainer) -> None:
        await answer.chunked_head()
        await container.exited.wait()
        await answer.chunk(json.dumps({"StatusCode": container.status, "Error": None}).encode())
        await answer.end()

    async def _start(self, answer: Answer, container: FakeContainer) -> None:
        await answer.json(204, None)
        if container.exit_code is not None:
            self._exit(container, container.exit_code)

    async def _logs(self, answer: Answer, container: FakeContainer) -> None:
        await answer.chunked_head()
        data = b"".join(frame(kind, text) for kind, text in container.output)
        for at in range(0, len(data), 5):  # frames split across chunks, as the wire may
            await answer.chunk(data[at : at + 5])
        await container.exited.wait()
        await answer.end()

    async def _stop(self, answer: Answer, container: FakeContainer) -> None:
        if container.exited.is_set():
            return await answer.json(304, None)
        self._exit(container, 143)  # SIGTERM through the init: 128 + 15
        await answer.json(204, None)

    async def _remove(self, answer: Answer, container: FakeContainer) -> None:
        del self.containers[container.id]
        await answer.json(204, None)


@dataclass
class Answer:
    stream: anyio.abc.ByteStream

    async def json(self, status: int, obj: Any) -> None:
        if obj is None:
            await self.stream.send(f"HTTP/1.1 {status} X\r\n\r\n".encode())
            return
        data = json.dumps(obj).encode()
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        await self.stream.send(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)

    async def error(self, status: int, message: str) -> None:
        # No length: the body ends with the connection, which the client must handle too.
        data = json.dumps({"message": message}).encode()
        await self.stream.send(f"HTTP/1.1 {status} X\r\n\r\n".encode() + data)

    async def chunked_head(self) -> None:
        await self.stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")

    async def chunk(self, data: bytes) -> None:
        await self.stream.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def end(self) -> None:
        await self.stream.send(b"0\r\n\r\n")
