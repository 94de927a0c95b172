"""Per-task overhead of the local engine: a flow running N no-op tasks in sequence.

    python bench/engine_overhead.py [N]

Prints microseconds per task run for direct calls and for ``submit`` with the
LocalExecutor, each the best of several repeats minus the cost of calling the
bare function. No stack is involved (LocalReporter, in-memory everything).
"""

from __future__ import annotations

import sys
import time

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


def best(fn: object, n: int, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(n)  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    called(10)  # warm up: imports, signature caches
    base = best(bare, n)
    for label, fl in (("call", called), ("submit", submitted)):
        per_task = (best(fl, n) - base) / n * 1e6
        print(f"{label:>6}: {per_task:6.1f} µs per task run ({n} tasks, LocalExecutor)")


if __name__ == "__main__":
    main()
