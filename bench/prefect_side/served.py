"""Prefect side: the trivial flows, served by one runner (run by bench/.prefect-venv/bin/python).

    python served.py        # serves noop/bench and sleeper/bench with limit 8

The runner polls every ``PREFECT_RUNNER_POLL_FREQUENCY`` seconds; the
comparison sets it to 1, the smallest value that integer setting takes
(0 would make the runner poll in a busy loop).
"""

import time

from prefect import flow, serve


@flow(name="noop")
def noop() -> int:
    return 1


@flow(name="sleeper")
def sleeper(seconds: float = 600.0) -> None:
    time.sleep(seconds)


if __name__ == "__main__":
    serve(
        noop.to_deployment("bench"),
        sleeper.to_deployment("bench"),
        limit=8,
        print_starting_message=False,
    )
