"""The run query index: an SQLite file fed by the ``flow_runs`` stream.

Owns answering ``flowrun.list``. It is a cache, never a source of truth: it is
built only from the bucket's stream (each write is a run event,
``shared.runlog``), remembers the last stream sequence it applied, and if the
file is lost (or the stream was recreated) it rebuilds itself from the
stream, which holds every run's newest write (and the delete marker of every
deleted one). It keeps runs as they are now, so a write it never saw (its run
moved on first) loses it nothing. An event older than what a row already
holds (by the run's KV revision) is ignored, so replays are harmless.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import msgspec
import nats.errors
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared import runlog
from shared.codec import decode, encode
from shared.messages import (
    FlowRunDeleted,
    FlowRunPage,
    ListFlowRuns,
)
from shared.models import FlowRun
from shared.states import StateType

log = logging.getLogger("sluice.readmodel")

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
CREATE TABLE IF NOT EXISTS deleted_runs (id TEXT PRIMARY KEY, revision INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

BATCH = 500
#: Bump when SCHEMA changes, or the stream it is fed from: an index built by an
#: older version is rebuilt. (4: fed from the flow_runs stream, whose sequences
#: are not those of the FLOWRUN_EVENTS stream that fed version 3.)
SCHEMA_VERSION = "4"


def _ts(dt: datetime) -> float:
    return dt.timestamp()


class ReadModel:
    def __init__(self, path: Path, nc: NATS) -> None:
        self._path = path
        self._nc = nc
        self._js = nc.jetstream()
        self._db: aiosqlite.Connection | None = None
        self.applied_seq = 0
        self._progress = anyio.Event()

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self._path)
        await self._db.executescript(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;"
        )
        await self._db.executescript(SCHEMA)
        if await self._meta("schema") != SCHEMA_VERSION:
            # Cheaper to rebuild from the stream than to migrate a cache.
            await self._db.executescript(
                "DROP TABLE IF EXISTS runs; DROP TABLE IF EXISTS run_tags; "
                "DROP TABLE IF EXISTS deleted_runs; DELETE FROM meta;"
            )
            await self._db.executescript(SCHEMA)
            await self._db.execute(
                "INSERT INTO meta(key, value) VALUES('schema', ?)", (SCHEMA_VERSION,)
            )
        self.applied_seq = int(await self._meta("seq") or 0)
        await self._db.commit()

    async def _meta(self, key: str) -> str | None:
        async with self.db.execute("SELECT value FROM meta WHERE key=?", (key,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "ReadModel.open() was not called"
        return self._db

    async def _reset(self) -> None:
        log.warning("read model is ahead of the flow_runs stream (stream recreated?); rebuilding")
        await self.db.executescript(
            "DELETE FROM runs; DELETE FROM run_tags; DELETE FROM deleted_runs; "
            "DELETE FROM meta WHERE key='seq';"
        )
        await self.db.commit()
        self.applied_seq = 0

    # --- feeding ------------------------------------------------------------------
    async def follow(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Apply events forever; resubscribe after a reconnect or any consumer failure.

        nats-py's ordered consumer can go quiet after the server restarts, so
        the subscription is rebuilt from the last applied sequence whenever
        the connection was re-established.

        Signals ``task_status`` once subscribed. Cancellation stops it between
        batches; a half-applied batch is rolled back by SQLite.
        """
        started = False
        while True:
            try:
                info = await self._js.stream_info(runlog.STREAM)
                if info.state.last_seq < self.applied_seq:
                    await self._reset()
                sub = await self._js.subscribe(
                    runlog.SUBJECTS,
                    stream=runlog.STREAM,
                    ordered_consumer=True,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=self.applied_seq + 1,
                    ),
                    idle_heartbeat=2.0,
                    pending_msgs_limit=50_000,
                )
                if not started:
                    started = True
                    task_status.started()
                try:
                    await self._consume(sub, self._nc.stats["reconnects"])
                finally:
                    await sub.unsubscribe()
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.warning("flow_runs stream consumer failed (%s); resubscribing", exc)
                await anyio.sleep(0.5)

    async def _consume(self, sub: Any, reconnects: int) -> None:
        """Apply messages in batches; return when the connection was re-established."""
        pending: list[Any] = []
        while True:
            timeout = 0.05 if pending else 1.0
            try:
                msg = await sub.next_msg(timeout=timeout)
            except nats.errors.TimeoutError:
                if pending:
                    await self._apply(pending)
                    pending = []
                if self._nc.stats["reconnects"] != reconnects:
                    return
                continue
            pending.append(msg)
            if len(pending) >= BATCH:
                await self._apply(pending)
                pending = []

    async def _apply(self, batch: list[Any]) -> None:
        db = self.db
        for msg in batch:
            try:
                event = runlog.event_of(msg)
            except msgspec.DecodeError as exc:
                seq = msg.metadata.sequence.stream
                log.error("skipping undecodable run at seq %d: %s", seq, exc)
                continue
            if isinstance(event, FlowRunDeleted):
                await self._delete(event.flow_run_id, event.revision)
            else:
                await self._upsert(event.flow_run, event.revision)
        last = batch[-1].metadata.sequence.stream
        await db.execute(
            "INSERT INTO meta(key, value) VALUES('seq', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(last),),
        )
        await db.commit()
        self.applied_seq = last
        self._progress.set()
        self._progress = anyio.Event()

    async def _delete(self, run_id: str, revision: int) -> None:
        """Drop the run, and keep a tombstone so an older write replayed later
        (a rebuild, a resubscription) does not bring it back."""
        db = self.db
        await db.execute("DELETE FROM runs WHERE id=? AND revision < ?", (run_id, revision))
        await db.execute(
            "DELETE FROM run_tags WHERE run_id=? AND run_id NOT IN (SELECT id FROM runs)",
            (run_id,),
        )
        await db.execute(
            "INSERT INTO deleted_runs(id, revision) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET revision=MAX(revision, excluded.revision)",
            (run_id, revision),
        )

    async def _upsert(self, run: FlowRun, revision: int) -> None:
        db = self.db
        # One statement, so the tombstone check costs no extra round trip to
        # aiosqlite's thread: a write older than the run's deletion is skipped.
        cur = await db.execute(
            """INSERT INTO runs (id, revision, name, flow_name, deployment_id, deployment_name,
                   parent_flow_run_id, runner, state_type, state_name, expected_start, body)
               SELECT ?,?,?,?,?,?,?,?,?,?,?,?
               WHERE NOT EXISTS (SELECT 1 FROM deleted_runs d WHERE d.id=? AND d.revision > ?)
               ON CONFLICT(id) DO UPDATE SET
                   revision=excluded.revision, name=excluded.name, runner=excluded.runner,
                   state_type=excluded.state_type, state_name=excluded.state_name,
                   expected_start=excluded.expected_start, body=excluded.body
               WHERE excluded.revision > runs.revision""",
            (
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
                run.id,
                revision,
            ),
        )
        if cur.rowcount:
            await db.execute("DELETE FROM run_tags WHERE run_id=?", (run.id,))
            await db.executemany(
                "INSERT OR IGNORE INTO run_tags(tag, run_id) VALUES (?, ?)",
                [(tag, run.id) for tag in run.tags],
            )

    async def sync(self, timeout: float = 5.0) -> bool:
        """Wait until every event published so far is applied (read-your-writes).

        A write is its event and is stored before it is acknowledged, so after
        ``sync`` a query sees every write its caller was told about. Gives up after
        ``timeout`` seconds (well inside a client's request timeout; a busy
        machine can lag a second or more), logs it, and returns False; the
        query then answers from what is applied.
        """
        info = await self._js.stream_info(runlog.STREAM)
        target = info.state.last_seq
        with anyio.move_on_after(timeout):
            while self.applied_seq < target:
                await self._progress.wait()
        if self.applied_seq < target:
            log.warning(
                "read model %d event(s) behind after %.0f s; answering from what is applied",
                target - self.applied_seq,
                timeout,
            )
            return False
        return True

    # --- querying -------------------------------------------------------------------
    async def query(self, req: ListFlowRuns, deployment_ids: list[str] | None) -> FlowRunPage:
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
        matching = " FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        total = None
        if req.count:
            async with self.db.execute("SELECT COUNT(*)" + matching, args) as cur:
                total = int((await cur.fetchone() or (0,))[0])
        sql = "SELECT body" + matching + " ORDER BY expected_start DESC, id DESC LIMIT ? OFFSET ?"
        args.extend([req.limit + 1, req.offset])
        async with self.db.execute(sql, args) as cur:
            rows = list(await cur.fetchall())
        runs = [decode(row[0], FlowRun) for row in rows[: req.limit]]
        more = len(rows) > req.limit
        return FlowRunPage(
            flow_runs=runs,
            offset=req.offset,
            next_offset=req.offset + req.limit if more else None,
            total=total,
        )
