"""A small pipeline: extract in parallel, retry a flaky step, load the total."""

import random

from engine import ThreadPoolExecutor, flow, get_run_logger, task


@task
def extract(source: int) -> list[int]:
    return list(range(source * 10, source * 10 + 10))


@task(retries=3, retry_delay_seconds=[0.1, 0.5, 1])
def transform(rows: list[int], flaky: float = 0.0) -> int:
    if random.random() < flaky:
        raise RuntimeError("the upstream API hiccuped")
    return sum(rows)


@task
def load(totals: list[int]) -> int:
    total = sum(totals)
    get_run_logger().info("loaded %d rows worth %d", 10 * len(totals), total)
    return total


@flow(name="etl", executor=ThreadPoolExecutor(max_workers=4))
def etl(sources: int = 4, flaky: float = 0.2) -> int:
    raw = extract.map(range(sources))
    totals = [transform.submit(rows, flaky) for rows in raw]
    return load([t.result() for t in totals])
