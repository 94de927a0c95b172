"""The trivial flow the runner benchmark runs."""

from engine import flow


@flow(name="noop")
def noop() -> int:
    return 1


@flow(name="sleeper")
def sleeper(seconds: float = 600.0) -> None:
    import time

    time.sleep(seconds)  # honours SIGTERM: the default action ends the process
