"""Prefect side: ``python tasks.py N REPEATS`` prints seconds per flow run of N no-op tasks.

The same work as ``bench/_sluice_tasks.py``: a task called N times in
sequence inside one flow. With ``PREFECT_API_URL`` set the flow reports to
that server; without it Prefect 3 runs against its ephemeral local API, which
is its way of running a flow with no server started by the user. One untimed
warm-up call of 10 tasks first.
"""

import json
import sys
import time

from prefect import flow, task


@task
def noop_task() -> None:
    return None


@flow
def called(n: int) -> None:
    for _ in range(n):
        noop_task()


if __name__ == "__main__":
    n, repeats = int(sys.argv[1]), int(sys.argv[2])
    called(10)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        called(n)
        seconds.append(time.perf_counter() - started)
    print(json.dumps(seconds))
