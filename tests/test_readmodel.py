"""The run index learns this orchestrator's writes from itself, and the rest from the stream."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client as NATS

from services.orchestrator import Orchestrator
from services.orchestrator._readmodel import ReadModel
from shared import names
from shared.codec import encode
from shared.messages import ListFlowRuns

from ._runs import scheduled_run

pytestmark = pytest.mark.anyio


async def test_a_write_made_elsewhere_reaches_the_index_without_a_query(
    orchestrator: Orchestrator, nc: NATS, unique: str
) -> None:
    """Another replica's write, or a tool's, is read from the stream once
    applied_seq has stood behind it; no list request is needed for that."""
    kv = await nc.jetstream().key_value(names.FLOW_RUNS_BUCKET)
    run = scheduled_run(f"f{unique}")
    seq = await kv.create(run.id, encode(run))
    model = orchestrator.read_model
    with anyio.fail_after(30):
        while model.applied_seq < seq:
            await model._progress.wait()  # set by every batch applied
    page = await model.query(ListFlowRuns(flow_name=f"f{unique}"), None)
    assert [r.id for r in page.flow_runs] == [run.id]


async def test_writes_handed_over_out_of_order_are_applied_up_to_the_first_gap(
    nc: NATS, tmp_path: Path, unique: str
) -> None:
    runs = [scheduled_run(f"f{unique}") for _ in range(3)]
    model = ReadModel(tmp_path / "runs.sqlite", nc)
    await model.open()
    try:
        await model._apply([(runs[2].id, 3, runs[2])])
        assert model.applied_seq == 0  # 1 and 2 are not known yet
        await model._apply([(runs[0].id, 1, runs[0])])
        assert model.applied_seq == 1
        await model._apply([(runs[1].id, 2, runs[1])])
        assert model.applied_seq == 3
        page = await model.query(ListFlowRuns(flow_name=f"f{unique}"), None)
        assert {r.id for r in page.flow_runs} == {r.id for r in runs}
    finally:
        await model.close()
    again = ReadModel(tmp_path / "runs.sqlite", nc)
    await again.open()
    try:
        assert again.applied_seq == 3  # kept in the file, with the rows
    finally:
        await again.close()
