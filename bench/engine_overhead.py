"""Per-task overhead of the engine: a flow running N no-op tasks in sequence.

    python bench/engine_overhead.py [N]            # no stack (LocalReporter)
    python bench/engine_overhead.py --stack [N]    # reporting to a real stack

Prints microseconds per task run for direct calls and for ``submit`` with the
LocalExecutor, each the best of several repeats minus the cost of calling the
bare function inside a flow (which includes the flow run's own creation and
proposals, so only the per-task part is left).

Without ``--stack`` nothing leaves the process. With ``--stack`` a private
nats-server (``services.dev.NatsServer``, ``sync_interval: always``) and an
in-process Orchestrator are started in a temporary folder, and the flows run
under a :class:`engine._stack.reporter.StackReporter`: every task run publishes its
records to ``taskrun.states.<id>`` and keeps its result, and each flow run
waits for all of them to be acknowledged before its final state.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from engine._core.context import use_runtime
from engine.flows import flow
from engine.tasks import task


def noop() -> None:
    return None


noop_task = task(noop)


@flow
def called(n: int) -> None:
    for _ in range(n):
        noop_task()


@flow
def submitted(n: int) -> None:
    for _ in range(n):
        noop_task.submit().result()


@flow
def bare(n: int) -> None:
    for _ in range(n):
        noop()


def best(fn: object, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(n)  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def stack() -> Iterator[None]:
    """A nats-server, an Orchestrator and a StackReporter runtime installed."""
    from anyio.from_thread import start_blocking_portal

    from engine._stack.reporter import StackReporter
    from services.dev import NatsServer
    from services.orchestrator import Orchestrator
    from shared.settings import Settings

    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        try:
            settings = Settings(nats_url=server.url, home=Path(tmp) / "home")
            with (
                start_blocking_portal() as portal,
                portal.wrap_async_context_manager(Orchestrator(settings, grace=2.0)),
                StackReporter(settings) as reporter,
                use_runtime(reporter.runtime()),
            ):
                yield
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=1000, help="tasks per flow run")
    parser.add_argument("--stack", action="store_true", help="report to a real stack")
    parser.add_argument("--repeats", type=int, default=None, help="best of this many")
    args = parser.parse_args()
    n = args.n
    repeats = args.repeats or (5 if args.stack else 7)
    where = "stack" if args.stack else "no stack"
    with stack() if args.stack else contextlib.nullcontext():
        called(10)  # warm up: imports, signature caches, connections
        base = best(bare, n, repeats)
        for label, fl in (("call", called), ("submit", submitted)):
            per_task = (best(fl, n, repeats) - base) / n * 1e6
            print(
                f"{label:>6}: {per_task:6.1f} µs per task run ({n} tasks, LocalExecutor, {where})"
            )


if __name__ == "__main__":
    main()
