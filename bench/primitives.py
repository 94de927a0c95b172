"""What the pieces of one flow run cost in CPU, measured one at a time.

    python -m bench.primitives [--quick]

``bench.runner`` reports the CPU each part of the stack spends per run during
a batch; this benchmark measures the primitives those parts are made of, so
the per-run total can be compared with what it cannot go below on this
machine:

* nats-server and client CPU per fsynced JetStream write (stream publish,
  KV update), per KV read, and per request/reply round trip through a
  trivial responder;
* the CPU of a process forked from one with the engine imported (as the
  fork server does, ``gc.freeze()`` included) that exits at once, that starts
  the reporter's thread and event loop, and that also connects to NATS.

Writes ``bench/results/primitives.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.from_thread
import nats

from services.dev._natsserver import NatsServer
from shared.settings import Settings

from ._harness import REPO, backend_options, fmt, machine_info, markdown_table
from ._proccpu import cpu_seconds, own_cpu_seconds

RESULTS = REPO / "bench" / "results" / "primitives.md"


async def nats_costs(server: NatsServer, count: int) -> list[tuple[str, float, float]]:
    """(operation, nats-server CPU ms, client CPU ms) per operation, one at a time."""
    assert server.process is not None
    pid = server.process.pid
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(name="PRIM", subjects=["prim.>"])
    kv = await js.create_key_value(bucket="prim", history=1)
    revisions = {f"k{i}": await kv.put(f"k{i}", b"x" * 600) for i in range(100)}

    async def update(i: int) -> None:
        key = f"k{i % 100}"
        revisions[key] = await kv.update(key, b"y" * 600, last=revisions[key])

    async def reply(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(b"ok")

    await nc.subscribe("prim.echo", cb=reply)
    ops: list[tuple[str, Callable[[int], Awaitable[object]]]] = [
        ("JetStream publish, fsynced (600 B)", lambda i: js.publish(f"prim.s.{i}", b"x" * 600)),
        ("KV update (compare-and-set), fsynced", update),
        ("KV get", lambda i: kv.get(f"k{i % 100}")),
        (
            "request/reply (the responder is this client)",
            lambda i: nc.request("prim.echo", b"x", timeout=5),
        ),
    ]
    rows = []
    for label, op in ops:
        server_before, client_before = cpu_seconds(pid), own_cpu_seconds()
        for i in range(count):
            await op(i)
        rows.append(
            (
                label,
                (cpu_seconds(pid) - server_before) * 1000 / count,
                (own_cpu_seconds() - client_before) * 1000 / count,
            )
        )
    await nc.close()
    return rows


def fork_costs(settings: Settings, count: int) -> list[tuple[str, float]]:
    """(what the child does, its CPU ms) for children of a warm engine process."""
    import engine.runner._forkserver  # everything a forked run has imported
    from engine.client import Client

    engine.runner._forkserver.prepare()  # as the server does before its first fork

    async def connect() -> None:
        async with Client(settings):
            pass

    def portal_only() -> None:
        with anyio.from_thread.start_blocking_portal() as p:
            p.call(anyio.sleep, 0)

    def portal_and_connect() -> None:
        with anyio.from_thread.start_blocking_portal() as p:
            p.call(connect)

    bodies: list[tuple[str, Callable[[], None]]] = [
        ("exits at once", lambda: None),
        ("starts the reporter's thread and event loop", portal_only),
        ("... and connects to NATS (what a spare does)", portal_and_connect),
    ]
    rows = []
    for label, body in bodies:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                try:
                    body()
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        rows.append((label, spent * 1000 / count))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    ops, forks = (300, 30) if args.quick else (3000, 200)
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        try:
            nats_rows = asyncio.run(nats_costs(server, ops))
            if backend_options():
                import uvloop

                nats_rows_uv = uvloop.run(nats_costs(server, ops))
                nats_rows = [
                    (label, min(s, su), min(c, cu))
                    for (label, s, c), (_, su, cu) in zip(nats_rows, nats_rows_uv, strict=True)
                ]
            settings = Settings(nats_url=server.url, home=Path(tmp) / "home")
            fork_rows = fork_costs(settings, forks)
        finally:
            server.stop()
        info = machine_info(Path(tmp))
    lines = [
        "# Primitive costs (CPU)",
        "",
        *(f"- **{k}**: {v}" for k, v in info.items()),
        "",
        f"Command: `.venv/bin/python -m bench.primitives{' --quick' if args.quick else ''}`",
        "",
        f"One operation at a time, {ops} of each, against a private nats-server with"
        " `sync_interval: always`; the lower of the asyncio and uvloop figures:",
        "",
        markdown_table(
            ["operation", "nats-server CPU ms", "client CPU ms"],
            [[label, fmt(s, 3), fmt(c, 3)] for label, s, c in nats_rows],
        ),
        "",
        f"A child forked {forks} times from a process with the engine imported, its"
        " codecs and thread portal warmed and its heap frozen (as `engine.runner._forkserver`"
        " prepares), CPU of the child:",
        "",
        markdown_table(["the child", "CPU ms"], [[label, fmt(ms, 2)] for label, ms in fork_rows]),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
