"""The run index's batch writes: the newest write of a run wins, in any order
and with deletes between, and tags follow the run they belong to."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from services.orchestrator import _runindex
from shared.messages import ListFlowRuns
from shared.models import FlowRun
from shared.states import StateType

from ._runs import scheduled_run


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn, _ = _runindex.open_writer(tmp_path / "runs.sqlite")
    yield conn
    conn.close()


def running(run: FlowRun) -> FlowRun:
    state = msgspec.structs.replace(run.state, type=StateType.RUNNING, name="Running")
    return msgspec.structs.replace(run, state=state, runner="r1")


def rows(conn: sqlite3.Connection, **query: object) -> dict[str, tuple[int, str]]:
    """id -> (revision, state) of the runs a list with ``query`` finds."""
    matching, args = _runindex.matching(ListFlowRuns(**query), None)  # type: ignore[arg-type]
    sql = "SELECT id, revision, state_type" + matching
    return {row[0]: (row[1], row[2]) for row in conn.execute(sql, args)}


def test_the_newest_write_of_a_run_in_one_batch_wins_whatever_its_place(
    conn: sqlite3.Connection,
) -> None:
    a, b = scheduled_run("f"), scheduled_run("f")
    _runindex.write(conn, [(a.id, 1, a), (a.id, 3, running(a)), (b.id, 5, running(b))], 5)
    _runindex.write(conn, [(b.id, 2, b)], 5)  # an older write of b, replayed later
    assert rows(conn) == {a.id: (3, "RUNNING"), b.id: (5, "RUNNING")}
    c = scheduled_run("f")
    _runindex.write(conn, [(c.id, 7, running(c)), (c.id, 6, c)], 7)  # newest first
    assert rows(conn)[c.id] == (7, "RUNNING")


def test_a_delete_inside_a_batch_keeps_its_place(conn: sqlite3.Connection) -> None:
    """Written, deleted, and made again under the same id (a keyed create over
    its delete marker), all in one batch: the new run stands, with its own tags."""
    old = scheduled_run("f", tags=["old"])
    new = msgspec.structs.replace(scheduled_run("f", tags=["new"]), id=old.id)
    _runindex.write(conn, [(old.id, 1, old), (old.id, 2, None), (new.id, 3, new)], 3)
    assert rows(conn) == {new.id: (3, "SCHEDULED")}
    assert rows(conn, tags=["new"]) == {new.id: (3, "SCHEDULED")}
    assert rows(conn, tags=["old"]) == {}


def test_a_write_older_than_the_runs_deletion_adds_neither_run_nor_tags(
    conn: sqlite3.Connection,
) -> None:
    run = scheduled_run("f", tags=["nightly"])
    _runindex.write(conn, [(run.id, 1, run), (run.id, 2, None)], 2)
    _runindex.write(conn, [(run.id, 1, run)], 2)  # replayed by a rebuild
    assert rows(conn) == {}
    assert conn.execute("SELECT COUNT(*) FROM run_tags").fetchone() == (0,)


def test_tags_are_written_once_and_found_among_many(conn: sqlite3.Connection) -> None:
    """More runs than one statement holds, each with tags; every later write of
    a run leaves its tags as they are (a run's tags never change)."""
    runs = [scheduled_run("f", tags=["etl", f"part-{i % 7}"]) for i in range(1200)]
    _runindex.write(conn, [(r.id, i + 1, r) for i, r in enumerate(runs)], len(runs))
    later = [(r.id, len(runs) + i + 1, running(r)) for i, r in enumerate(runs)]
    _runindex.write(conn, later, 2 * len(runs))
    assert len(rows(conn, tags=["etl"])) == 1200
    part3 = {r.id for i, r in enumerate(runs) if i % 7 == 3}
    assert set(rows(conn, tags=["etl", "part-3"])) == part3
    assert conn.execute("SELECT COUNT(*) FROM run_tags").fetchone() == (2400,)
