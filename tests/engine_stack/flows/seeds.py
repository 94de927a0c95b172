"""Flows for the seed tests: what a run's environment holds, and a debugging session."""

from __future__ import annotations

import os
import threading

from engine import SynchronousExecutor, flow, task
from tests.engine_stack.flows.pipeline import enrich, extract, load, transform


@flow
def my_variable() -> str | None:
    """The value of MY_VARIABLE in the process that runs the flow."""
    return os.environ.get("MY_VARIABLE")


@task
def thread_of(x: int) -> tuple[int, int]:
    return x, threading.get_ident()


@task
def debugged(x: int) -> int:
    breakpoint()  # the point of the test: it must stop here
    return x + 1


@flow(executor=SynchronousExecutor())
def on_one_thread(n: int = 3) -> list[tuple[int, int]]:
    return [f.result() for f in thread_of.map(list(range(n)))] + [(-1, threading.get_ident())]


@flow(executor=SynchronousExecutor())
def with_a_breakpoint() -> int:
    return debugged.submit(41).result()


@flow
def submitted(workdir: str) -> int:
    """pipeline.five_steps with futures passed along, so a failed task does not stop the body."""
    rows = extract.submit(workdir)
    table = enrich.submit(workdir, transform.submit(workdir, rows))
    return load.submit(workdir, table).result()


if __name__ == "__main__":
    print("result:", with_a_breakpoint())
