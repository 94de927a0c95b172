"""Task runs: retries, caching, futures as arguments, map, direct calls."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from engine import states
from engine._core.cache import CacheEntry, FolderCache, MemoryCache, task_input_hash
from engine._core.context import Runtime, get_run_context, use_runtime
from engine.exceptions import MissingContextError, NotJSONable
from engine.flows import flow
from engine.futures import TaskFuture
from engine.tasks import task, unmapped
from shared.states import AWAITING_RETRY, CACHED, RETRYING, StateType


def flaky_task(failures: int, **options):
    """A task that raises on its first `failures` calls."""
    calls = []

    @task(name="flaky", **options)
    def flaky() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise ConnectionError(f"attempt {len(calls)} failed")
        return "ok"

    return flaky, calls


# --- retries --------------------------------------------------------------------------
def test_retries_follow_the_delay_list(runtime, reporter, clock) -> None:
    flaky, calls = flaky_task(3, retries=3, retry_delay_seconds=[1, 10])
    start = clock.now()

    @flow
    def pipeline() -> str:
        return flaky()

    assert pipeline() == "ok"
    assert len(calls) == 4
    seen = [(s.type, s.name, s.details.retry_count) for s in reporter.task_states("flaky-0")]
    assert seen == [
        (StateType.PENDING, "Pending", None),
        (StateType.RUNNING, "Running", None),
        (StateType.SCHEDULED, AWAITING_RETRY, 1),
        (StateType.RUNNING, RETRYING, 1),
        (StateType.SCHEDULED, AWAITING_RETRY, 2),
        (StateType.RUNNING, RETRYING, 2),
        (StateType.SCHEDULED, AWAITING_RETRY, 3),
        (StateType.RUNNING, RETRYING, 3),
        (StateType.COMPLETED, "Completed", None),
    ]
    waits = [s for s in reporter.task_states("flaky-0") if s.name == AWAITING_RETRY]
    # Delays 1, 10, then the last one repeats: scheduled at +1, +11, +21.
    offsets = [(s.details.scheduled_time - start).total_seconds() for s in waits]
    assert offsets == [1, 11, 21]
    assert waits[0].message == "ConnectionError: attempt 1 failed"
    assert clock.slept == [s.details.scheduled_time for s in waits]


def test_retries_exhausted_fail_with_the_last_exception(runtime, reporter) -> None:
    flaky, calls = flaky_task(5, retries=2)

    @flow
    def pipeline() -> str:
        return flaky()

    with pytest.raises(ConnectionError, match="attempt 3 failed"):
        pipeline()
    assert len(calls) == 3
    final = reporter.task_states("flaky-0")[-1]
    assert final.type is StateType.FAILED
    assert final.message == "ConnectionError: attempt 3 failed"


def test_retry_jitter_only_adds(runtime, reporter, clock) -> None:
    flaky, _ = flaky_task(1, retries=1, retry_delay_seconds=10, retry_jitter_factor=0.5)
    start = clock.now()

    @flow
    def pipeline() -> str:
        return flaky()

    pipeline()
    (waiting,) = [s for s in reporter.task_states("flaky-0") if s.name == AWAITING_RETRY]
    # runtime.random() is pinned to 0.5: 10 + 10 * 0.5 * 0.5
    assert (waiting.details.scheduled_time - start).total_seconds() == 12.5


def test_real_clock_retry_with_tiny_delay() -> None:
    flaky, calls = flaky_task(2, retries=2, retry_delay_seconds=[0.01, 0.01])

    @flow
    def pipeline() -> str:
        return flaky()

    with use_runtime(Runtime(cache=MemoryCache())):
        assert pipeline() == "ok"
    assert len(calls) == 3


def test_task_outside_a_flow_is_the_function_with_retries(reporter) -> None:
    flaky, calls = flaky_task(1, retries=1)
    assert flaky() == "ok"
    assert len(calls) == 2
    assert reporter.events == []  # nothing is reported without a flow


def test_task_timeout_fails_timed_out(runtime) -> None:
    release = threading.Event()

    @task(timeout_seconds=0.05)
    def slow() -> None:
        release.wait(5)

    @flow
    def pipeline():
        return slow(return_state=True)

    try:
        state = pipeline()
    finally:
        release.set()
    assert (state.type, state.name) == (StateType.FAILED, states.TIMED_OUT)
    assert "timeout of 0.05 s" in state.message


# --- caching --------------------------------------------------------------------------
def test_cache_hit_skips_the_function_until_expiry(runtime, reporter, clock) -> None:
    calls = []

    @task(
        cache_key_fn=lambda ctx, params: f"double-{params['x']}",
        cache_expiration=timedelta(hours=1),
    )
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    @flow
    def pipeline(x: int):
        return double(x, return_state=True)

    first = pipeline(4)
    assert (first.type, first.name, first.data) == (StateType.COMPLETED, "Completed", 8)
    assert first.details.cache_key == "double-4"
    assert first.details.cache_expiration == clock.now() + timedelta(hours=1)

    hit = pipeline(4)
    assert (hit.type, hit.name, hit.data) == (StateType.COMPLETED, CACHED, 8)
    assert calls == [4]
    assert pipeline(5).name == "Completed"  # another key
    assert calls == [4, 5]

    clock.advance(3601)
    assert pipeline(4).name == "Completed"  # expired: runs again
    assert calls == [4, 5, 4]


def test_cached_value_is_returned(runtime) -> None:
    calls = []

    @task(cache_key_fn=lambda ctx, params: "fixed")
    def make() -> dict:
        calls.append(1)
        return {"rows": [1, 2]}

    @flow
    def pipeline():
        return make(), make()

    first, second = pipeline()
    assert first == second == {"rows": [1, 2]}
    assert calls == [1]


def test_cache_key_fn_none_means_no_cache(runtime) -> None:
    calls = []

    @task(cache_key_fn=lambda ctx, params: None)
    def make() -> int:
        calls.append(1)
        return 1

    @flow
    def pipeline() -> None:
        make()
        make()

    pipeline()
    assert len(calls) == 2


def test_task_input_hash_keys_on_inputs(runtime) -> None:
    calls = []

    @task(cache_key_fn=task_input_hash)
    def inc(x: int, opts: dict) -> int:
        calls.append(x)
        return x + 1

    @flow
    def pipeline():
        return [inc(1, {"a": 1, "b": 2}), inc(1, {"b": 2, "a": 1}), inc(2, {}), inc(1, {"a": 2})]

    assert pipeline() == [2, 2, 3, 2]
    assert calls == [1, 2, 1]


def test_folder_cache_shares_json_values_across_stores(tmp_path, reporter, clock) -> None:
    calls = []

    @task(cache_key_fn=lambda ctx, params: "rows", cache_expiration=timedelta(minutes=5))
    def rows() -> tuple:
        calls.append(1)
        return ("a", 1)

    @flow
    def pipeline():
        return rows()

    for _ in range(2):  # a new store on the same folder, as another process would have
        with use_runtime(Runtime(reporter=reporter, clock=clock, cache=FolderCache(tmp_path))):
            value = pipeline()
    assert calls == [1]
    assert value == ["a", 1]  # read back as JSON types
    clock.advance(301)
    assert FolderCache(tmp_path).get("rows", clock.now()) is None


def test_folder_cache_refuses_non_json(tmp_path, reporter, clock) -> None:
    class Opaque:
        pass

    @task(cache_key_fn=lambda ctx, params: "opaque")
    def make() -> Opaque:
        return Opaque()

    @flow
    def pipeline():
        return make(return_state=True)

    with use_runtime(Runtime(reporter=reporter, clock=clock, cache=FolderCache(tmp_path))):
        state = pipeline()
    assert state.type is StateType.FAILED
    assert "could not be cached" in state.message and "Opaque" in state.message
    with pytest.raises(NotJSONable, match="JSON"):
        FolderCache(tmp_path).put("k", CacheEntry(Opaque()))


def test_folder_cache_ignores_unreadable_files(tmp_path, clock) -> None:
    store = FolderCache(tmp_path)
    store.put("k", CacheEntry([1, 2]))
    for path in tmp_path.iterdir():
        path.write_bytes(b"not json")
    assert store.get("k", clock.now()) is None


# --- futures as arguments -------------------------------------------------------------
@task
def add(x: int, y: int = 0) -> int:
    return x + y


@task
def total(values) -> int:
    if isinstance(values, dict):
        values = values.values()
    return sum(values)


def test_futures_nested_in_arguments_are_resolved(runtime, reporter) -> None:
    @flow
    def pipeline():
        a, b = add.submit(1), add.submit(2)
        return (
            total([a, b, 3]),
            total({"x": a, "y": (b,)} | {"y": b}),
            total.submit((a, b)).result(),
        )

    assert pipeline() == (6, 3, 3)
    # the upstream ids are recorded on the run
    runs = {r.name: r for r in reporter.task_runs.values()}
    assert set(runs["total-0"].upstream_ids) == {runs["add-0"].id, runs["add-1"].id}


def test_deeply_nested_future(runtime) -> None:
    @task
    def unwrap(arg):
        return arg

    @flow
    def pipeline():
        a = add.submit(41, 1)
        return unwrap({"outer": [({"inner": a},)], "set": frozenset({1})})

    assert pipeline() == {"outer": [({"inner": 42},)], "set": frozenset({1})}


def test_wait_for_orders_without_passing_values(runtime) -> None:
    order = []

    @task
    def first() -> None:
        order.append("first")

    @task
    def second() -> None:
        order.append("second")

    @flow
    def pipeline() -> None:
        f = first.submit()
        second(wait_for=[f])

    pipeline()
    assert order == ["first", "second"]


def test_future_api(runtime) -> None:
    @flow
    def pipeline():
        future = add.submit(1, 2)
        assert isinstance(future, TaskFuture)
        assert future.done()
        assert future.wait().type is StateType.COMPLETED
        assert future.state.data == 3
        assert future.name == "add-0"
        return future.result()

    assert pipeline() == 3


# --- map --------------------------------------------------------------------------------
def test_map_thousand_items(runtime) -> None:
    @flow
    def pipeline():
        futures = add.map(range(1000), unmapped(1))
        return [f.result() for f in futures]

    assert pipeline() == list(range(1, 1001))


def test_map_zips_iterables_and_keeps_unmapped_whole(runtime) -> None:
    @task
    def combine(x: int, y: str, extra: list) -> str:
        return f"{x}{y}{len(extra)}"

    @flow
    def pipeline():
        futures = combine.map([1, 2], y="ab", extra=unmapped([0, 0, 0]))
        mapped_strs = combine.map([1, 2], ["a", "b"], unmapped([]))
        return [f.result() for f in futures + mapped_strs]

    # a str is not mapped over unless wrapped in a list
    assert pipeline() == ["1ab3", "2ab3", "1a0", "2b0"]


def test_map_over_a_future_and_map_index(runtime, reporter) -> None:
    @task
    def numbers() -> list[int]:
        return [1, 2, 3]

    @flow
    def pipeline():
        return [f.result() for f in add.map(numbers.submit(), y=10)]

    assert pipeline() == [11, 12, 13]
    mapped = sorted(r.map_index for r in reporter.task_runs.values() if r.task_name == "add")
    assert mapped == [0, 1, 2]


def test_map_errors(runtime) -> None:
    @flow
    def pipeline(case: str) -> None:
        if case == "lengths":
            add.map([1, 2], [1])
        else:
            add.map(1, 2)

    with pytest.raises(ValueError, match="different lengths"):
        pipeline("lengths")
    with pytest.raises(TypeError, match="at least one iterable"):
        pipeline("none")


def test_submit_and_map_need_a_flow() -> None:
    with pytest.raises(MissingContextError, match="running flow"):
        add.submit(1)
    with pytest.raises(MissingContextError):
        add.map([1])


def test_task_run_context(runtime) -> None:
    @task(name="inspect-me", tags=["t"])
    def inspect_me(x: int) -> tuple:
        ctx = get_run_context()
        return ctx.task.name, ctx.run.name, ctx.parameters, ctx.flow_run_id, ctx.task_run_id

    @flow
    def pipeline():
        return inspect_me(7), get_run_context().flow_run_id

    (task_name, run_name, params, flow_run_id, task_run_id), expected_flow_run = pipeline()
    assert (task_name, run_name, params) == ("inspect-me", "inspect-me-0", {"x": 7})
    assert flow_run_id == expected_flow_run and task_run_id


def test_task_options_are_validated() -> None:
    with pytest.raises(ValueError, match="retries"):
        task(retries=-1)(lambda: None)
    with pytest.raises(TypeError, match="cache_expiration"):
        task(cache_expiration=60)(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown task options"):
        add.with_options(retires=2)
    assert add.with_options(retries=2).retries == 2


def test_sequential_calls_stay_in_one_thread(runtime) -> None:
    threads = set()

    @task
    def where() -> None:
        threads.add(threading.get_ident())
        time.sleep(0)

    @flow
    def pipeline() -> None:
        for _ in range(3):
            where()
            where.submit()

    pipeline()
    assert threads == {threading.get_ident()}
