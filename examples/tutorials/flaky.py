"""Tutorial 3: retries and caching (docs/tutorials/retries-and-caching.md)."""

from datetime import timedelta
from typing import Any

from engine import flow, get_run_logger, task

calls = {"fetch": 0, "square": 0}


@task(retries=3, retry_delay_seconds=[0.1, 0.5, 1])
def fetch(source: str) -> int:
    # Fails twice, then works: the retries absorb it.
    calls["fetch"] += 1
    if calls["fetch"] < 3:
        raise ConnectionError(f"{source} did not answer (attempt {calls['fetch']})")
    return 7


def by_number(context: Any, parameters: dict[str, Any]) -> str:
    # The cache key: equal keys share one result, so name what the result depends on.
    return f"square-{parameters['n']}"


@task(cache_key_fn=by_number, cache_expiration=timedelta(hours=1))
def square(n: int) -> int:
    calls["square"] += 1
    return n * n


@flow
def flaky_numbers() -> int:
    n = fetch("sensor-api")
    first = square(n)
    again = square(n)  # same key: Cached, the function does not run again
    get_run_logger().info("fetch ran %d times, square %d time(s)", calls["fetch"], calls["square"])
    return first + again


if __name__ == "__main__":
    print("result:", flaky_numbers())
    print(f"fetch ran {calls['fetch']} times, square {calls['square']} time(s)")
