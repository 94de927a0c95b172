"""Server-sent events: a response that streams what a producer task sends.

The producer runs in the response's own task group, so it ends with the
response: when the browser goes away, when the producer is done, or when the
server shuts down (``closing`` is set) — an event stream never holds up a
graceful shutdown. A comment line every ``keepalive`` seconds keeps proxies
from closing a quiet stream and lets the server notice a vanished client.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["EventStream", "Producer", "event"]

Producer = Callable[[MemoryObjectSendStream[bytes]], Awaitable[None]]


def event(name: str, data: Any) -> bytes:
    """One SSE message; ``data`` is sent as JSON (one line, so no escaping issues)."""
    payload = json.dumps(data, separators=(",", ":"), default=str)
    return f"event: {name}\ndata: {payload}\n\n".encode()


class EventStream(Response):
    def __init__(self, produce: Producer, closing: anyio.Event, *, keepalive: float = 15.0) -> None:
        # Not Response.__init__: it would declare an empty body's Content-Length.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self._produce = produce
        self._closing = closing
        self._keepalive = keepalive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        disconnected = False
        out, pending = anyio.create_memory_object_stream[bytes](256)

        async def until_disconnect() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            tg.cancel_scope.cancel()

        async def until_closing() -> None:
            await self._closing.wait()
            tg.cancel_scope.cancel()

        async def produce() -> None:
            async with out:
                await self._produce(out)

        async with anyio.create_task_group() as tg:
            tg.start_soon(until_disconnect)
            tg.start_soon(until_closing)
            tg.start_soon(produce)
            # Tell the browser how soon to reconnect if the stream breaks.
            await send(
                {"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True}
            )
            async with pending:
                while True:
                    chunk = b": keepalive\n\n"
                    with anyio.move_on_after(self._keepalive):
                        try:
                            chunk = await pending.receive()
                        except anyio.EndOfStream:
                            break
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            tg.cancel_scope.cancel()
        if not disconnected:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
