"""The web UI's pure parts: the Run form, live-row filters, formatting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from services.ui._format import ago, describe_schedule, human_seconds
from services.ui._live import RunFilter
from services.ui._params import RAW_FIELD, field_errors, fields_for, read_form
from shared.errors import Conflict, InvalidParameters
from shared.models import (
    CronSchedule,
    Deployment,
    DeploymentSchedule,
    FlowRun,
    IntervalSchedule,
)
from shared.states import State, StateType

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _deployment(schema: dict[str, Any], parameters: dict[str, Any] | None = None) -> Deployment:
    return Deployment(
        id="00000000-0000-0000-0000-000000000001",
        name="d",
        flow_name="f",
        parameters=parameters or {},
        parameter_schema=schema,
        created=NOW,
        updated=NOW,
    )


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "default": "world"},
        "count": {"type": "integer"},
        "ratio": {"type": "number", "default": 0.5},
        "loud": {"type": "boolean", "default": True},
        "mode": {"enum": ["fast", "slow"]},
        "config": {"anyOf": [{"type": "object"}, {"type": "null"}]},
    },
    "required": ["count"],
}


def test_fields_follow_the_schema() -> None:
    fields = {f.name: f for f in fields_for(_deployment(SCHEMA, {"name": "Ada"}))}
    assert [f.kind for f in fields.values()] == [
        "string",
        "json",
        "json",
        "boolean",
        "choice",
        "json",
    ]
    assert fields["name"].placeholder == "default: Ada"  # the deployment's default wins
    assert fields["count"].required and fields["count"].placeholder == "required"
    assert fields["loud"].checked
    assert fields["mode"].choices == ("fast", "slow")
    assert fields["config"].type_label == "object | null"


def test_form_text_becomes_parameters() -> None:
    fields = fields_for(_deployment(SCHEMA))
    form = {"p.name": "3", "p.count": "7", "p.ratio": "", "p.mode": "slow", "p.config": '{"a": 1}'}
    read, parameters = read_form(fields, form)
    # A string stays a string; empty fields are left to the defaults; an unticked box is false.
    assert parameters == {
        "name": "3",
        "count": 7,
        "loud": False,
        "mode": "slow",
        "config": {"a": 1},
    }
    assert all(f.error is None for f in read)


def test_text_that_is_no_number_goes_to_the_orchestrator_to_judge() -> None:
    _, parameters = read_form(fields_for(_deployment(SCHEMA)), {"p.count": "ten"})
    assert parameters is not None and parameters["count"] == "ten"


def test_text_that_is_no_json_is_refused_beside_its_field() -> None:
    read, parameters = read_form(fields_for(_deployment(SCHEMA)), {"p.config": "{oops"})
    assert parameters is None
    errors = {f.name: f.error for f in read if f.error}
    assert list(errors) == ["config"] and "not valid JSON" in str(errors["config"])
    assert next(f for f in read if f.name == "config").value == "{oops"  # kept to correct


def test_without_a_schema_one_json_object_is_asked_for() -> None:
    (field,) = fields_for(_deployment({}))
    assert field.name == RAW_FIELD and field.kind == "raw"
    _, parameters = read_form([field], {RAW_FIELD: '{"x": [1, 2]}'})
    assert parameters == {"x": [1, 2]}
    read, parameters = read_form([field], {RAW_FIELD: "[1]"})
    assert parameters is None and "JSON object" in str(read[0].error)


def test_orchestrator_problems_land_beside_their_fields() -> None:
    fields = fields_for(_deployment(SCHEMA))
    error = InvalidParameters(
        "parameters do not match",
        details={
            "problems": [
                {"parameter": "count", "message": "'ten' is not of type 'integer'"},
                {"parameter": "(parameters)", "message": "'count' is a required property"},
                {"parameter": "(parameters)", "message": "Additional properties are not allowed"},
            ]
        },
    )
    placed, general = field_errors(fields, error)
    by_name = {f.name: f.error for f in placed}
    assert by_name["count"] == "'ten' is not of type 'integer'; required"
    assert general == ["Additional properties are not allowed"]
    assert field_errors(fields, Conflict("no"))[1] == ["no"]


def _run(state: StateType, name: str, tags: list[str]) -> FlowRun:
    return FlowRun(
        id="r",
        name="n",
        flow_name="f",
        deployment_id="d1",
        deployment_name="f/d",
        tags=tags,
        state=State(type=state, name=name, timestamp=NOW),
        created=NOW,
        updated=NOW,
        expected_start_time=NOW,
    )


def test_live_rows_match_the_page_filters_as_the_orchestrator_does() -> None:
    late = _run(StateType.SCHEDULED, "Late", ["a", "b"])
    assert RunFilter([], None, []).matches(late)
    assert RunFilter(["scheduled"], None, []).matches(late)
    assert RunFilter(["late"], "f/d", ["a"]).matches(late)
    assert RunFilter(["d1"], None, []).matches(late) is False
    assert not RunFilter(["RUNNING"], None, []).matches(late)
    assert not RunFilter([], "f/other", []).matches(late)
    assert not RunFilter([], None, ["a", "c"]).matches(late)


def test_formatting() -> None:
    assert human_seconds(0.25) == "250ms"
    assert human_seconds(3600) == "60m"
    assert ago(NOW - timedelta(seconds=30), NOW) == "30s ago"
    assert ago(NOW + timedelta(hours=3), NOW) == "in 3.0h"
    every = DeploymentSchedule(schedule=IntervalSchedule(interval=300))
    assert describe_schedule(every) == "every 5m"
    cron = DeploymentSchedule(
        schedule=CronSchedule(cron="0 9 * * *", timezone="Europe/Paris"), active=False
    )
    assert describe_schedule(cron) == "cron 0 9 * * * (Europe/Paris), inactive"
