"""The run query index: an SQLite file kept from the ``flow_runs`` bucket's writes.

Owns answering ``flowrun.list``. It is a cache, never a source of truth: what
it holds comes from the bucket's writes (each is a run event,
``shared.runlog``); it remembers the stream sequence up to which every write
is applied (``applied_seq``), and if the file is lost (or the stream was
recreated) it rebuilds itself from the stream, which holds every run's
newest write (and the delete marker of every deleted one). It keeps runs as
they are now, so a write it never saw (its run moved on first) loses it
nothing. A write older than what a row already holds (by the run's KV
revision) is ignored, so applying one twice, or out of order, is harmless.

How it learns writes. This orchestrator writes the bucket, so its own writes
are handed over as they are acknowledged (:meth:`ReadModel.note`): no message
per write comes back to it from the stream, which cost a create at
concurrency 1 about a tenth of its time. What no note covers (another
replica's writes, a tool's delete, a note lost to a crash) is read from the
stream (:meth:`ReadModel._catch_up`): when a query needs it (:meth:`sync`),
at start-up, and when ``applied_seq`` has stood still behind newer writes
for :data:`CHECK_EVERY` seconds. Writes are applied in batches: what arrived
within :data:`GATHER` seconds, in one worker-thread call (``_runindex``).
"""

from __future__ import annotations

import logging
import sqlite3
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
from shared.codec import decode
from shared.messages import FlowRunDeleted, FlowRunPage, ListFlowRuns
from shared.models import FlowRun

from . import _runindex
from ._runindex import Write

log = logging.getLogger("sluice.readmodel")

#: Most writes applied in one transaction.
BATCH = 500
#: How long a batch of noted writes gathers (unless a query is waiting).
GATHER = 0.02
#: How long ``applied_seq`` may stand behind newer writes before they are read from the stream.
CHECK_EVERY = 1.0


class ReadModel:
    def __init__(self, path: Path, nc: NATS) -> None:
        self._path = path
        self._js = nc.jetstream()
        self._db: aiosqlite.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._writes = anyio.CapacityLimiter(1)
        self.applied_seq = 0
        """Every write of the stream up to this sequence is applied."""
        self._above: set[int] = set()  # applied sequences after applied_seq
        self._noted: list[Write] = []
        self._arrived = anyio.Event()
        self._progress = anyio.Event()
        self._hurry = anyio.Event()  # set while a query waits to see what was written
        self._waiting = 0
        self._applying = anyio.Lock()
        self._catching_up = anyio.Lock()

    async def open(self) -> None:
        self._writer, self.applied_seq = await self._write(_runindex.open_writer, self._path)
        self._db = await aiosqlite.connect(self._path)
        await self._db.executescript(_runindex.PRAGMAS)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None
        if self._writer is not None:
            await self._write(self._writer.close)
            self._writer = None

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "ReadModel.open() was not called"
        return self._db

    async def _write(self, fn: Any, *args: Any) -> Any:
        # Not abandoned on cancellation: a batch is committed or rolled back whole.
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._writes)

    # --- learning writes ----------------------------------------------------------
    def note(self, run_id: str, revision: int, run: FlowRun | None) -> None:
        """A write of this orchestrator, acknowledged at stream sequence
        ``revision``: ``run`` as stored, or None for a delete marker."""
        self._noted.append((run_id, revision, run))
        self._arrived.set()

    async def follow(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Apply noted writes in batches, and read from the stream what they miss.

        Signals ``task_status`` at once; writes made before start-up are read
        from the stream in the background (a query waits for them in ``sync``).
        """
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            task_status.started()
            while True:
                await self._arrived.wait()
                if not self._waiting and self._hurry.is_set():
                    self._hurry = anyio.Event()
                if len(self._noted) < BATCH:
                    with anyio.move_on_after(GATHER):
                        await self._hurry.wait()  # a query waits: apply what is here
                noted, self._noted = self._noted[:BATCH], self._noted[BATCH:]
                if not self._noted:
                    self._arrived = anyio.Event()
                await self._apply(noted)

    async def _watch(self) -> None:
        """Read from the stream, at start-up and whenever ``applied_seq`` stood
        still for CHECK_EVERY behind newer writes, what no note covered."""
        stood = -1  # applied_seq at the last look; -1: catch up at once
        while True:
            try:
                info = await self._js.stream_info(runlog.STREAM)
                last = info.state.last_seq
                if last < self.applied_seq:
                    await self._reset()
                elif last > self.applied_seq and (stood < 0 or self.applied_seq == stood):
                    await self._catch_up(last)
                stood = self.applied_seq
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.warning("reading the flow_runs stream failed (%s); trying again", exc)
            await anyio.sleep(CHECK_EVERY)

    async def _catch_up(self, upto: int) -> None:
        """Apply the stream's writes after ``applied_seq`` through ``upto`` that
        no note covered. Sequences the stream no longer holds were replaced by a
        newer write of their key, so reading past them accounts for them."""
        async with self._catching_up:
            start = self.applied_seq + 1
            if start > upto:
                return
            sub = await self._js.subscribe(
                runlog.SUBJECTS,
                stream=runlog.STREAM,
                ordered_consumer=True,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
                ),
                pending_msgs_limit=50_000,
            )
            try:
                batch: list[Any] = []
                while True:
                    msg = await sub.next_msg(timeout=5.0)
                    meta = msg.metadata
                    seq = meta.sequence.stream
                    if seq > self.applied_seq and seq not in self._above:
                        batch.append(msg)
                    done = seq >= upto or meta.num_pending == 0
                    if done or len(batch) >= BATCH:
                        # Every sequence up to this one is now read (or gone).
                        await self._apply_messages(batch, max(seq, upto) if done else seq)
                        batch = []
                    if done:
                        return
            finally:
                await sub.unsubscribe()

    async def _apply_messages(self, msgs: list[Any], through: int = 0) -> None:
        """Apply messages of the stream; every sequence up to ``through`` is accounted for."""
        writes: list[Write] = []
        for msg in msgs:
            try:
                event = runlog.event_of(msg)
            except msgspec.DecodeError as exc:
                seq = msg.metadata.sequence.stream
                log.error("skipping undecodable run at seq %d: %s", seq, exc)
                continue
            if isinstance(event, FlowRunDeleted):
                writes.append((event.flow_run_id, event.revision, None))
            else:
                writes.append((event.flow_run.id, event.revision, event.flow_run))
        await self._apply(writes, through)

    async def _apply(self, writes: list[Write], through: int = 0) -> None:
        """Apply ``writes`` in one transaction, with the ``applied_seq`` they make."""
        async with self._applying:
            above = self._above | {seq for _, seq, _ in writes if seq > self.applied_seq}
            mark = max(self.applied_seq, through)
            while mark + 1 in above:
                mark += 1
            if writes or mark != self.applied_seq:
                assert self._writer is not None, "ReadModel.open() was not called"
                await self._write(_runindex.write, self._writer, writes, mark)
            self._above = {seq for seq in above if seq > mark}
            self.applied_seq = mark
        self._progress.set()
        self._progress = anyio.Event()

    async def _reset(self) -> None:
        log.warning("read model is ahead of the flow_runs stream (stream recreated?); rebuilding")
        assert self._writer is not None, "ReadModel.open() was not called"
        async with self._applying:
            await self._write(_runindex.clear, self._writer)
            self.applied_seq = 0
            self._above.clear()

    async def sync(self, timeout: float = 5.0) -> bool:
        """Wait until every write stored so far is applied (read-your-writes).

        A write is stored before it is acknowledged, so after ``sync`` a query
        sees every write its caller was told about. The writes handed over so
        far are applied at once; whatever is still missing is read from the
        stream. Gives up after ``timeout`` seconds
        (well inside a client's request timeout), logs it, and returns False;
        the query then answers from what is applied.
        """
        info = await self._js.stream_info(runlog.STREAM)
        target = info.state.last_seq
        self._waiting += 1
        try:
            with anyio.move_on_after(timeout):
                if self.applied_seq < target and self._noted:
                    self._hurry.set()
                    await self._progress.wait()  # the writes handed over so far
                if self.applied_seq < target:
                    await self._catch_up(target)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("reading the flow_runs stream failed (%s)", exc)
        finally:
            self._waiting -= 1
        if self.applied_seq < target:
            log.warning(
                "read model %d write(s) behind after %.0f s; answering from what is applied",
                target - self.applied_seq,
                timeout,
            )
            return False
        return True

    # --- querying -------------------------------------------------------------------
    async def query(self, req: ListFlowRuns, deployment_ids: list[str] | None) -> FlowRunPage:
        matching, args = _runindex.matching(req, deployment_ids)
        total = None
        if req.count:
            async with self.db.execute("SELECT COUNT(*)" + matching, args) as cur:
                total = int((await cur.fetchone() or (0,))[0])
        sql = "SELECT body" + matching + " ORDER BY expected_start DESC, id DESC LIMIT ? OFFSET ?"
        async with self.db.execute(sql, [*args, req.limit + 1, req.offset]) as cur:
            rows = list(await cur.fetchall())
        runs = [decode(row[0], FlowRun) for row in rows[: req.limit]]
        more = len(rows) > req.limit
        return FlowRunPage(
            flow_runs=runs,
            offset=req.offset,
            next_offset=req.offset + req.limit if more else None,
            total=total,
        )
