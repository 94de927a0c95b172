"""Pure pieces: retry math, state constructors, parameter binding, future search."""

from __future__ import annotations

from collections import namedtuple
from datetime import UTC, datetime, timedelta

import pytest

from engine import states
from engine._core.cache import CacheEntry, MemoryCache
from engine._core.params import FnSignature
from engine._core.reporting import TaskRunInfo
from engine._core.retry import RetryPolicy, next_delay
from engine.exceptions import MissingResult, ParameterError, UpstreamFailed
from engine.futures import TaskFuture, TaskOutcome, collect_futures, substitute
from shared.errors import SluiceError
from shared.states import StateType

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_retry_delays_repeat_the_last_one() -> None:
    policy = RetryPolicy.build(5, [1, 2, 4])
    assert [next_delay(policy, n, 0.0) for n in range(1, 6)] == [1, 2, 4, 4, 4]
    assert next_delay(RetryPolicy.build(1, 3), 1, 0.0) == 3
    assert next_delay(RetryPolicy.build(1, None), 1, 0.9) == 0


def test_retry_jitter_bounds() -> None:
    policy = RetryPolicy.build(1, 10, jitter_factor=0.2)
    assert next_delay(policy, 1, 0.0) == 10
    assert next_delay(policy, 1, 0.999) < 12


@pytest.mark.parametrize("args", [(-1, 0, None), (1, -1, None), (1, [1, -2], None), (1, 1, -0.1)])
def test_retry_policy_refuses_bad_values(args) -> None:
    with pytest.raises(ValueError):
        RetryPolicy.build(*args)


def test_state_constructors() -> None:
    waiting = states.AwaitingRetry(scheduled_time=NOW, retry_count=2, timestamp=NOW)
    assert (waiting.type, waiting.name, waiting.details.retry_count) == (
        StateType.SCHEDULED,
        "AwaitingRetry",
        2,
    )
    assert states.Retrying(retry_count=1).type is StateType.RUNNING
    assert states.NotReady(message="m").type is StateType.PENDING
    assert states.is_final(states.NotReady(message="m"))
    assert not states.is_final(states.Running())
    assert states.TriggerFailed(message="m").type is StateType.FAILED
    assert states.is_failed(states.Crashed())
    assert states.Completed(data={"big": "dict"}).data is None  # only scalars are inlined
    assert states.Completed(data="x" * 2000).data is None
    assert states.Completed(data=3.5).data == 3.5
    assert states.describe_exception(ValueError()) == "ValueError"


def test_bind_and_call_args() -> None:
    def fn(a, /, b, *rest, c=3, **more):
        return a, b, rest, c, more

    sig = FnSignature.of(fn)
    params = sig.bind((1, 2, 9), {"x": 4})
    assert params == {"a": 1, "b": 2, "rest": (9,), "c": 3, "more": {"x": 4}}
    args, kwargs = sig.call_args(params)
    assert fn(*args, **kwargs) == (1, 2, (9,), 3, {"x": 4})
    with pytest.raises(ParameterError, match="missing required parameter 'b'"):
        sig.bind((1,), {})


def test_unresolvable_hints_count_as_any() -> None:
    def fn(x: NotDefinedAnywhere, y: int) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    sig = FnSignature.of(fn)
    assert sig.validate({"x": object, "y": "2"})["y"] == 2


def test_engine_errors_are_sluice_errors() -> None:
    assert issubclass(ParameterError, SluiceError) and issubclass(ParameterError, TypeError)
    assert UpstreamFailed("x").code == "upstream_failed"


def test_outcome_unwrap() -> None:
    assert TaskOutcome(states.Completed(), 5).unwrap() == 5
    with pytest.raises(KeyError):
        TaskOutcome(states.Failed(), None, KeyError("k")).unwrap()
    with pytest.raises(UpstreamFailed, match="because"):
        TaskOutcome(states.NotReady(message="because")).unwrap()
    with pytest.raises(MissingResult):
        TaskOutcome(states.Crashed(message="gone")).unwrap()


def test_collect_and_substitute_futures() -> None:
    run = TaskRunInfo(id="1", name="t-0", task_name="t", state=states.Pending())
    a, b = TaskFuture(run, None), TaskFuture(run, None)
    Pair = namedtuple("Pair", "left right")
    value = {"k": [a, (1, Pair(b, 2))], "s": {3}, "plain": "text"}
    found: list = []
    collect_futures(value, found)
    assert found == [a, b]
    replaced = substitute(value, {id(a): "A", id(b): "B"})
    assert replaced == {"k": ["A", (1, Pair("B", 2))], "s": {3}, "plain": "text"}
    assert isinstance(replaced["k"][1][1], Pair)


def test_memory_cache_expiry() -> None:
    cache = MemoryCache()
    cache.put("k", CacheEntry([1], expires=NOW + timedelta(seconds=1)))
    assert cache.get("k", NOW).value == [1]
    assert cache.get("k", NOW + timedelta(seconds=1)) is None
    assert cache.get("k", NOW) is None  # dropped once expired
