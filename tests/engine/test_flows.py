"""Flow runs: parameters, final states, retries, timeouts, subflows, return tasks."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date

import msgspec
import pytest

from engine import states
from engine._core.context import FlowRunContext, get_run_context
from engine.exceptions import ParameterError, RunTimeout
from engine.flows import FlowRunResult, flow
from engine.tasks import task
from shared.states import AWAITING_RETRY, RETRYING, StateType


@task
def double(x: int) -> int:
    return 2 * x


@task
def explode() -> None:
    raise RuntimeError("kaboom")


# --- calling ----------------------------------------------------------------------------
def test_call_returns_the_value(runtime) -> None:
    @flow
    def pipeline(x: int) -> int:
        return double(x) + 1

    assert pipeline(3) == 7


def test_call_raises_the_flows_exception_and_return_state_does_not(runtime) -> None:
    @flow(name="broken")
    def broken() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        broken()
    state = broken(return_state=True)
    assert state.type is StateType.FAILED
    assert state.message == "KeyError: 'missing'"


def test_states_of_a_flow_run(runtime, reporter) -> None:
    @flow(name="simple")
    def simple() -> str:
        return "done"

    state = simple(return_state=True)
    assert (state.type, state.data) == (StateType.COMPLETED, "done")
    assert [s.type for s in reporter.flow_states("simple")] == [
        StateType.PENDING,
        StateType.RUNNING,
        StateType.COMPLETED,
    ]


def test_decorator_options() -> None:
    @flow(name="etl", version="1.2", retries=2, retry_delay_seconds=[1, 2], timeout_seconds=9)
    def etl() -> None:
        """Extract and load."""

    assert (etl.name, etl.version, etl.retries, etl.timeout_seconds) == ("etl", "1.2", 2, 9)
    assert etl.description == "Extract and load."
    assert flow(lambda: None).name == "<lambda>"

    @flow
    def my_flow() -> None:
        pass

    assert my_flow.name == "my-flow"
    assert my_flow.with_options(name="other").name == "other"


# --- parameters --------------------------------------------------------------------------
@flow(name="typed")
def typed(day: date, count: int, label: str = "x") -> tuple:
    return day, count, label


def test_parameters_are_coerced_to_hints(runtime) -> None:
    assert typed("2030-01-02", "3") == (date(2030, 1, 2), 3, "x")
    assert typed.run({"day": "2030-01-02", "count": 3}).result() == (date(2030, 1, 2), 3, "x")


def test_missing_parameter_fails_the_run_naming_it(runtime, reporter) -> None:
    state = typed(day="2030-01-02", return_state=True)
    assert state.type is StateType.FAILED
    assert "count" in state.message and "missing" in state.message
    with pytest.raises(ParameterError, match="'count'") as raised:
        typed(day="2030-01-02")
    assert isinstance(raised.value, TypeError)
    assert raised.value.details == {"parameter": "count"}
    assert [s.type for s in reporter.flow_states("typed")][:2] == [
        StateType.PENDING,
        StateType.FAILED,
    ]  # the body never ran


def test_wrong_type_fails_the_run_naming_it(runtime) -> None:
    state = typed("2030-01-02", "many", return_state=True)
    assert state.type is StateType.FAILED
    assert state.message.startswith("invalid value for parameter 'count'")
    assert "Expected `int`, got `str`" in state.message
    with pytest.raises(ParameterError, match="'day'"):
        typed("not a date", 1)


def test_unexpected_parameter_is_refused(runtime) -> None:
    with pytest.raises(ParameterError, match="nope"):
        typed.run({"day": "2030-01-02", "count": 1, "nope": 1}).result()


def test_validation_can_be_turned_off(runtime) -> None:
    loose = typed.with_options(validate_parameters=False)
    assert loose("2030-01-02", "3") == ("2030-01-02", "3", "x")


class Point(msgspec.Struct):
    x: int
    y: int


@dataclass
class Opaque:
    name: str


def test_structs_and_plain_classes_as_parameters(runtime) -> None:
    @flow
    def shapes(p: Point, o: Opaque, tags: list[str] | None = None) -> tuple:
        return p, o, tags

    point, opaque, tags = shapes({"x": 1, "y": "2"}, Opaque("a"), ("t",))
    assert point == Point(1, 2) and opaque == Opaque("a") and tags == ["t"]
    with pytest.raises(ParameterError, match="'p'"):
        shapes({"x": 1}, Opaque("a"))


def test_parameter_schema() -> None:
    @flow(name="etl", description="Nightly load.")
    def etl(day: date, point: Point, limit: int = 100, tags: tuple[str, ...] = ("a",),
            opaque: Opaque | None = None, anything=object()) -> None:  # fmt: skip
        pass

    schema = etl.parameter_schema()
    assert schema["title"] == "etl" and schema["description"] == "Nightly load."
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == ["day", "point"]
    props = schema["properties"]
    assert props["day"] == {"type": "string", "format": "date"}
    assert props["limit"] == {"type": "integer", "default": 100}
    assert props["tags"]["default"] == ["a"]
    assert props["point"] == {"$ref": "#/$defs/Point"}
    assert schema["$defs"]["Point"]["required"] == ["x", "y"]
    assert "default" not in props["anything"]  # not JSON: left out, still optional
    msgspec.json.encode(schema)  # pure JSON, ready to store in a deployment


def test_schema_validates_with_jsonschema() -> None:
    import jsonschema

    schema = typed.parameter_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({"day": "2030-01-01", "count": 1}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"day": "2030-01-01"}, schema)


def test_positional_only_and_var_parameters(runtime) -> None:
    @flow
    def odd(a: int, /, *rest: int, scale: int = 1, **named: int) -> tuple:
        return a, rest, scale, named

    assert odd("1", 2, "3", scale=2, z="4") == (1, (2, 3), 2, {"z": 4})
    assert odd.parameter_schema()["additionalProperties"] is True


# --- final state ------------------------------------------------------------------------
def test_flow_returning_none_fails_when_a_task_failed(runtime) -> None:
    @flow
    def careless() -> None:
        explode.submit()  # nobody looks at it

    state = careless(return_state=True)
    assert state.type is StateType.FAILED
    assert "explode-0" in state.message and "kaboom" in state.message
    with pytest.raises(RuntimeError, match="kaboom"):
        careless()


def test_flow_returning_a_value_completes_despite_failed_tasks(runtime) -> None:
    @flow
    def handled() -> str:
        state = explode.submit().wait()
        return state.name

    assert handled() == "Failed"


def test_returned_futures_are_resolved(runtime) -> None:
    @flow
    def returns_futures():
        return {"a": double.submit(1), "b": [double.submit(2)]}

    assert returns_futures() == {"a": 2, "b": [4]}


def test_returned_failed_future_fails_the_flow(runtime) -> None:
    @flow
    def returns_failure():
        return explode.submit()

    with pytest.raises(RuntimeError, match="kaboom"):
        returns_failure()


# --- retries and timeouts -----------------------------------------------------------------
def test_flow_retries_rerun_the_body(runtime, reporter, clock) -> None:
    attempts = []

    @flow(name="retrying", retries=2, retry_delay_seconds=5)
    def retrying() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("not yet")
        return double(len(attempts))

    start = clock.now()
    assert retrying() == 6
    seen = [(s.type, s.name) for s in reporter.flow_states("retrying")]
    assert seen == [
        (StateType.PENDING, "Pending"),
        (StateType.RUNNING, "Running"),
        (StateType.SCHEDULED, AWAITING_RETRY),
        (StateType.RUNNING, RETRYING),
        (StateType.SCHEDULED, AWAITING_RETRY),
        (StateType.RUNNING, RETRYING),
        (StateType.COMPLETED, "Completed"),
    ]
    waits = [s for s in reporter.flow_states("retrying") if s.name == AWAITING_RETRY]
    assert [s.details.retry_count for s in waits] == [1, 2]
    assert (waits[0].details.scheduled_time - start).total_seconds() == 5
    assert waits[0].message == "OSError: not yet"


def test_flow_retry_judges_each_attempt_on_its_own_tasks(runtime) -> None:
    attempts = []

    @flow(retries=1)
    def second_time_lucky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            explode.submit()

    assert second_time_lucky(return_state=True).type is StateType.COMPLETED
    assert len(attempts) == 2


def test_flow_timeout_fails_timed_out(runtime) -> None:
    release = threading.Event()
    after_timeout = []

    @flow(timeout_seconds=0.05)
    def sleepy() -> None:
        release.wait(5)
        try:
            double(1)
        except RunTimeout as exc:
            after_timeout.append(exc)
        finally:
            done.set()

    done = threading.Event()
    state = sleepy(return_state=True)
    assert (state.type, state.name) == (StateType.FAILED, states.TIMED_OUT)
    assert "timeout of 0.05 s" in state.message
    with pytest.raises(RunTimeout):
        sleepy.with_options(timeout_seconds=0.01)()
    release.set()
    assert done.wait(5)
    assert after_timeout  # the abandoned body could not start more task runs


# --- subflows and context -------------------------------------------------------------------
def test_subflow_is_a_child_run_of_its_parent(runtime, reporter) -> None:
    seen = {}

    @flow(name="child")
    def child(x: int) -> int:
        ctx = get_run_context()
        assert isinstance(ctx, FlowRunContext)
        seen["child"] = ctx.run
        seen["parent_ctx"] = ctx.parent
        return double(x)

    @flow(name="parent")
    def parent() -> int:
        seen["parent"] = get_run_context().run
        return child(2) + child(3)

    assert parent() == 10
    assert seen["child"].parent_flow_run_id == seen["parent"].id
    assert seen["parent_ctx"].run is seen["parent"]
    children = [r for r in reporter.flow_runs.values() if r.flow_name == "child"]
    assert len(children) == 2
    assert {r.parent_flow_run_id for r in children} == {seen["parent"].id}
    assert seen["parent"].parent_flow_run_id is None


def test_failed_subflow_fails_a_parent_that_ignores_it(runtime) -> None:
    @flow(name="child")
    def child() -> None:
        raise ValueError("child broke")

    @flow(name="parent")
    def parent() -> None:
        child(return_state=True)

    state = parent(return_state=True)
    assert state.type is StateType.FAILED and "child" in state.message


def test_run_context_outside_a_run_raises() -> None:
    from engine.exceptions import MissingContextError

    with pytest.raises(MissingContextError):
        get_run_context()


# --- return tasks ---------------------------------------------------------------------------
def test_run_returns_the_states_of_requested_tasks(runtime) -> None:
    @flow
    def pipeline(n: int) -> int:
        futures = double.map(range(n))
        explode.submit()
        return sum(f.result() for f in futures)

    result = pipeline.run({"n": 3}, return_tasks=[double, "explode"])
    assert isinstance(result, FlowRunResult)
    assert result.state.type is StateType.COMPLETED and result.result() == 6
    assert [r.name for r in result.task_runs[double]] == ["double-0", "double-1", "double-2"]
    assert [s.data for s in result.task_states(double)] == [0, 2, 4]
    assert result.task_states("explode")[0].type is StateType.FAILED
    assert result.run.parameters == {"n": 3}

    plain = pipeline.run({"n": 1})
    assert plain.task_runs == {}  # nothing kept unless asked for


def test_run_rejects_the_wrong_kind_of_flow() -> None:
    async def async_fn() -> None:
        pass

    with pytest.raises(TypeError, match="run_async"):
        flow(async_fn).run()
