"""The run index's SQL: its schema, how a batch of run events is written, how a
``flowrun.list`` becomes a query.

Writes are plain functions on a :mod:`sqlite3` connection, so the read model
runs a whole batch (every statement and the commit) in one worker-thread call:
a thread hop per statement cost more than the statement itself, and the
orchestrator's event loop answers requests meanwhile. Queries go through
aiosqlite on a second connection; WAL lets them read while a batch is written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.codec import encode
from shared.messages import ListFlowRuns
from shared.models import FlowRun
from shared.states import StateType

#: One write of the ``flow_runs`` bucket: the run's id, the write's revision
#: (its stream sequence), and the run as stored, or None for a delete marker.
Write = tuple[str, int, FlowRun | None]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    name TEXT NOT NULL,
    flow_name TEXT NOT NULL,
    deployment_id TEXT,
    deployment_name TEXT,
    parent_flow_run_id TEXT,
    runner TEXT,
    state_type TEXT NOT NULL,
    state_name TEXT NOT NULL,
    expected_start REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (expected_start DESC, id DESC);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state_type, expected_start DESC);
CREATE INDEX IF NOT EXISTS runs_by_deployment ON runs (deployment_id, expected_start DESC);
CREATE INDEX IF NOT EXISTS runs_by_flow ON runs (flow_name, expected_start DESC);
CREATE INDEX IF NOT EXISTS runs_by_runner ON runs (runner, state_type);
CREATE TABLE IF NOT EXISTS run_tags (
    tag TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (tag, run_id)
);
CREATE INDEX IF NOT EXISTS run_tags_by_run ON run_tags (run_id);
CREATE TABLE IF NOT EXISTS deleted_runs (id TEXT PRIMARY KEY, revision INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: Bump when SCHEMA changes, or the stream it is fed from: an index built by an
#: older version is rebuilt. (4: fed from the flow_runs stream, whose sequences
#: are not those of the FLOWRUN_EVENTS stream that fed version 3.)
SCHEMA_VERSION = "4"

PRAGMAS = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;"

#: One statement upserts a whole run of writes: the worker thread then gives the
#: event loop the GIL back once per statement, not once per row. (Taken back
#: row by row, the GIL went to the worker first each time, and the loop waited:
#: it cost a create at concurrency 1 about 5 % of its throughput.)
_UPSERT_ROWS = """
INSERT INTO runs (id, revision, name, flow_name, deployment_id, deployment_name,
    parent_flow_run_id, runner, state_type, state_name, expected_start, body)
SELECT * FROM (VALUES {rows}) AS v
WHERE NOT EXISTS (SELECT 1 FROM deleted_runs d WHERE d.id = v.column1 AND d.revision > v.column2)
ON CONFLICT(id) DO UPDATE SET
    revision=excluded.revision, name=excluded.name, runner=excluded.runner,
    state_type=excluded.state_type, state_name=excluded.state_name,
    expected_start=excluded.expected_start, body=excluded.body
WHERE excluded.revision > runs.revision
"""
_ROW = "(" + ",".join("?" * 12) + ")"
#: A run's tags are set when it is created and never change: they are added
#: once, for a run the index holds.
_TAG_ROWS = """
INSERT OR IGNORE INTO run_tags(tag, run_id)
SELECT v.column1, v.column2 FROM (VALUES {rows}) AS v
WHERE EXISTS (SELECT 1 FROM runs r WHERE r.id = v.column2)
"""
#: Rows per statement, largest first: a handful of statement texts, so each is
#: compiled once and then found in the connection's cache. (The largest keeps
#: well under SQLite's 32,766 parameters.)
_SIZES = (256, 64, 16, 4, 1)


def _chunks(n: int) -> Iterator[tuple[int, int]]:
    """(start, size) of the statements ``n`` rows take, each size in _SIZES."""
    start = 0
    for size in _SIZES:
        while n - start >= size:
            yield start, size
            start += size


def _ts(dt: datetime) -> float:
    return dt.timestamp()


def open_writer(path: Path) -> tuple[sqlite3.Connection, int]:
    """The connection batches are written on, with the schema in place (an index
    of another version is dropped, to be rebuilt from the stream); and the last
    stream sequence the index holds (0: none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # One worker thread at a time uses it (the read model's write limiter).
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.executescript(PRAGMAS)
    conn.executescript(SCHEMA)
    if _meta(conn, "schema") != SCHEMA_VERSION:
        # Cheaper to rebuild from the stream than to migrate a cache.
        conn.executescript(
            "DROP TABLE IF EXISTS runs; DROP TABLE IF EXISTS run_tags; "
            "DROP TABLE IF EXISTS deleted_runs; DELETE FROM meta;"
        )
        conn.executescript(SCHEMA)
        conn.execute("INSERT INTO meta(key, value) VALUES('schema', ?)", (SCHEMA_VERSION,))
    conn.commit()
    return conn, int(_meta(conn, "seq") or 0)


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return str(row[0]) if row else None


def clear(conn: sqlite3.Connection) -> None:
    """Forget every run (the stream was recreated: the index is rebuilt from it)."""
    conn.executescript(
        "DELETE FROM runs; DELETE FROM run_tags; DELETE FROM deleted_runs; "
        "DELETE FROM meta WHERE key='seq';"
    )
    conn.commit()


def write(conn: sqlite3.Connection, writes: Sequence[Write], applied_seq: int) -> None:
    """Apply ``writes`` in order and record ``applied_seq``, in one transaction."""
    try:
        upserts: list[tuple[FlowRun, int]] = []
        for run_id, revision, run in writes:
            if run is not None:
                upserts.append((run, revision))
                continue
            _upsert(conn, upserts)  # the writes before a delete come before it
            upserts = []
            _delete(conn, run_id, revision)
        _upsert(conn, upserts)
        conn.execute(
            "INSERT INTO meta(key, value) VALUES('seq', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(applied_seq),),
        )
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def _delete(conn: sqlite3.Connection, run_id: str, revision: int) -> None:
    """Drop the run, and keep a tombstone so an older write replayed later
    (a rebuild, a resubscription) does not bring it back."""
    conn.execute("DELETE FROM runs WHERE id=? AND revision < ?", (run_id, revision))
    conn.execute(
        "DELETE FROM run_tags WHERE run_id=? AND run_id NOT IN (SELECT id FROM runs)",
        (run_id,),
    )
    conn.execute(
        "INSERT INTO deleted_runs(id, revision) VALUES (?, ?) "
        "ON CONFLICT(id) DO UPDATE SET revision=MAX(revision, excluded.revision)",
        (run_id, revision),
    )


def _upsert(conn: sqlite3.Connection, writes: Sequence[tuple[FlowRun, int]]) -> None:
    """Store each run unless the index holds a newer write of it, or its deletion
    (a write older than a tombstone is skipped); in order, so the newest write
    of a run in ``writes`` is the one kept."""
    tags: list[str] = []
    for start, size in _chunks(len(writes)):
        chunk = writes[start : start + size]
        args: list[Any] = []
        for run, revision in chunk:
            args += (
                run.id,
                revision,
                run.name,
                run.flow_name,
                run.deployment_id,
                run.deployment_name,
                run.parent_flow_run_id,
                run.runner,
                run.state.type.value,
                run.state.name,
                _ts(run.expected_start_time),
                encode(run),
            )
            for tag in run.tags:
                tags += (tag, run.id)
        conn.execute(_UPSERT_ROWS.format(rows=",".join([_ROW] * size)), args)
    # After every run is in: a tag's run must be held for the tag to be added.
    for start, size in _chunks(len(tags) // 2):
        pairs = tags[2 * start : 2 * (start + size)]
        conn.execute(_TAG_ROWS.format(rows=",".join(["(?,?)"] * size)), pairs)


def matching(req: ListFlowRuns, deployment_ids: list[str] | None) -> tuple[str, list[Any]]:
    """The ``FROM … WHERE …`` text of the runs ``req`` asks for, and its arguments."""
    where: list[str] = []
    args: list[Any] = []
    if req.states:
        types = [s.upper() for s in req.states if s.upper() in StateType.__members__]
        state_names = [s for s in req.states if s.upper() not in StateType.__members__]
        clauses = []
        if types:
            clauses.append(f"state_type IN ({','.join('?' * len(types))})")
            args.extend(types)
        if state_names:
            clauses.append(f"state_name COLLATE NOCASE IN ({','.join('?' * len(state_names))})")
            args.extend(state_names)
        where.append("(" + " OR ".join(clauses) + ")")
    if deployment_ids is not None:
        where.append(f"deployment_id IN ({','.join('?' * len(deployment_ids)) or 'NULL'})")
        args.extend(deployment_ids)
    if req.flow_name:
        where.append("flow_name = ?")
        args.append(req.flow_name)
    if req.parent_flow_run_id:
        where.append("parent_flow_run_id = ?")
        args.append(req.parent_flow_run_id)
    if req.runner:
        where.append("runner = ?")
        args.append(req.runner)
    if req.since:
        where.append("expected_start >= ?")
        args.append(_ts(req.since))
    if req.until:
        where.append("expected_start < ?")
        args.append(_ts(req.until))
    if req.name is not None:
        where.append("name = ?")
        args.append(req.name)
    if req.id_prefix:
        # A range on the primary key, so a prefix look-up stays an index seek.
        where.append("id >= ? AND id < ?")
        args.extend([req.id_prefix, req.id_prefix + "\uffff"])
    for tag in req.tags:
        where.append("id IN (SELECT run_id FROM run_tags WHERE tag = ?)")
        args.append(tag)
    return " FROM runs" + (" WHERE " + " AND ".join(where) if where else ""), args
