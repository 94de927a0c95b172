"""A greeting that takes its time, for the concurrency-limit how-to."""

import time

from engine import flow, get_run_logger


@flow
def slow_greet(name: str = "world", seconds: float = 5.0) -> str:
    time.sleep(seconds)
    get_run_logger().info("Hello, %s, at last", name)
    return f"Hello, {name}!"
