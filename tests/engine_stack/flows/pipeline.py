"""Flows the stack tests execute through ``python -m engine`` and ``sluice run``.

Tasks that must be counted append their name to ``<workdir>/executions``;
``transform`` fails while ``<workdir>/fail`` exists, so a test can make the
first attempt fail and a retry succeed.
"""

from __future__ import annotations

from pathlib import Path

from engine import flow, get_run_logger, task
from engine.runs import create_flow_run, wait_for_flow_run


def _mark(workdir: str, name: str) -> None:
    with (Path(workdir) / "executions").open("a") as f:
        f.write(name + "\n")


@task
def extract(workdir: str) -> list[int]:
    _mark(workdir, "extract")
    return [1, 2, 3]


@task
def clean(workdir: str, rows: list[int]) -> list[int]:
    _mark(workdir, "clean")
    return [r * 10 for r in rows]


@task
def transform(workdir: str, rows: list[int]) -> list[int]:
    _mark(workdir, "transform")
    if (Path(workdir) / "fail").exists():
        raise RuntimeError("transform failed on purpose")
    return [r + 1 for r in rows]


@task
def enrich(workdir: str, rows: list[int]) -> dict[str, list[int]]:
    _mark(workdir, "enrich")
    return {"rows": rows}


@task
def load(workdir: str, table: dict[str, list[int]]) -> int:
    _mark(workdir, "load")
    return sum(table["rows"])


@flow
def five_steps(workdir: str) -> int:
    rows = extract(workdir)
    rows = clean(workdir, rows)
    rows = transform(workdir, rows)
    return load(workdir, enrich(workdir, rows))


@task
def greet(name: str) -> str:
    get_run_logger().info("greeting %s", name)
    return f"hello {name}"


@flow(log_prints=True)
def hello(name: str, times: int = 2) -> dict[str, object]:
    """Greets ``name`` ``times`` times (parameters are coerced: times='3' is 3)."""
    print(f"starting for {name}")
    greetings = [f.result() for f in greet.map([name] * times)]
    return {"greetings": greetings, "times": times}


@flow
def failing() -> None:
    raise ValueError("the flow failed on purpose")


class Opaque:
    """Neither JSON nor msgpack can encode it."""


@task
def small() -> dict[str, int]:
    return {"a": 1}


@task
def large() -> str:
    return "x" * (100 * 1024)


@task
def raw_bytes() -> bytes:
    return b"\x00\x01binary"


@task
def opaque() -> Opaque:
    return Opaque()


@flow
def kinds_of_results() -> str:
    small()
    large()
    raw_bytes()
    opaque()
    return "y" * (80 * 1024)


@flow
def child(x: int) -> int:
    get_run_logger().info("child got %d", x)
    return x * 2


@flow
def parent(x: int = 4) -> int:
    return child(x) + child(x + 1)


@flow
def orchestrating(deployment: str) -> str:
    created = create_flow_run(deployment, parameters={"name": "from a parent", "times": 1})
    done = wait_for_flow_run(created.id, timeout=60)
    return f"{created.id} {done.state.type.value} {done.parent_flow_run_id}"


def not_a_flow() -> None:
    """Plain function: an entrypoint naming it is a user error."""


@task
async def add_one(x: int) -> int:
    return x + 1


@flow
async def async_parent(x: int) -> int:
    first = await add_one(x)
    futures = add_one.map([first, first + 1])
    return sum([await f for f in futures]) + child(first)


@flow
def leaves_work_behind(workdir: str) -> str:
    """Registers an exit callback and starts a non-daemon thread that outlives the body."""
    import atexit
    import threading
    import time

    atexit.register(_mark, workdir, "atexit")

    def late() -> None:
        time.sleep(0.3)
        _mark(workdir, "thread")

    threading.Thread(target=late).start()
    return "returned"
