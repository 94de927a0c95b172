"""A pipeline whose task fails in a nested function, for the failure tests."""

from __future__ import annotations

from engine import flow, task


def open_table(name: str) -> None:
    raise ValueError(f"table {name!r} does not exist")  # FAILING LINE


@task(retries=2, retry_delay_seconds=0)
def extract(table: str) -> None:
    open_table(table)


@flow
def failing(table: str = "orders") -> None:
    extract.submit(table)
