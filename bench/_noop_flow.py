"""The trivial flow the runner benchmark runs."""

from engine import flow


@flow(name="noop")
def noop() -> int:
    return 1
