"""Where results go: inline, the object store (JSON or msgpack), or not persisted."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine._core.context import use_runtime
from engine._stack.reporter import StackReporter
from engine.exceptions import MissingResult
from engine.results import (
    INLINE_LIMIT,
    NOT_PERSISTED,
    FolderResultStore,
    is_persisted,
    load_result,
    persist_result,
)
from shared.states import StateType

from .conftest import Stack
from .flows import pipeline


def test_results_by_kind_in_the_stack(stack: Stack) -> None:
    with StackReporter(stack.settings) as reporter, use_runtime(reporter.runtime()):
        result = pipeline.kinds_of_results.run()
        store = reporter.results
        flow_state = result.state
        assert flow_state.type is StateType.COMPLETED
        ref = flow_state.details.result_ref or ""
        assert ref.startswith("object:sluice_results/") and ref.endswith(".json")
        assert flow_state.data is None
        assert load_result(flow_state, store) == "y" * (80 * 1024)

        records = stack.final_records(result.id)
        small, large = records["small:0"].state, records["large:0"].state
        raw, opaque = records["raw_bytes:0"].state, records["opaque:0"].state
        assert small.data == {"a": 1} and small.details.result_ref is None
        assert (large.details.result_ref or "").endswith(".json")
        assert load_result(large, store) == "x" * (100 * 1024)
        assert (raw.details.result_ref or "").endswith(".msgpack")
        assert load_result(raw, store) == b"\x00\x01binary"
        assert opaque.type is StateType.COMPLETED and not is_persisted(opaque)
        assert (opaque.message or "").startswith(NOT_PERSISTED)
        assert "never pickles" in (opaque.message or "")
        with pytest.raises(MissingResult):
            store.get("object:sluice_results/not-there.json")


def test_the_folder_store_follows_the_same_rules(tmp_path: Path) -> None:
    store = FolderResultStore(tmp_path / "results")
    assert persist_result([1, "two"], store, "r1").data == [1, "two"]
    big = persist_result("z" * (INLINE_LIMIT + 1), store, "r2")
    assert big.ref == "file:r2.json" and big.data is None
    assert (tmp_path / "results" / "r2.json").exists()
    packed = persist_result({(1, 2): b"k"}, store, "r3")  # tuple keys: not JSON
    assert packed.ref == "file:r3.msgpack"
    assert store.get(packed.ref)
    kept = persist_result(object(), store, "r4")
    assert kept.ref is None and (kept.message or "").startswith(NOT_PERSISTED)


@pytest.mark.parametrize(
    "ref", ["file:../escape.json", "file:/etc/passwd", "object:sluice_results/x.json", "file:x"]
)
def test_the_folder_store_reads_only_its_own_names(tmp_path: Path, ref: str) -> None:
    with pytest.raises(MissingResult):
        FolderResultStore(tmp_path).get(ref)
