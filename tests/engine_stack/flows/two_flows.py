"""Two flows in one file: ``sluice run --path`` must be told which."""

from engine import flow


@flow
def first() -> str:
    return "first"


@flow(name="the-second")
def second(n: int) -> int:
    return n + 1
