"""What users type on the ``sluice`` command line, parsed: durations, start
times, ``--param`` pairs, ``--params`` objects and run ids (no stack needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.cli._parse import (
    parse_duration,
    parse_param,
    parse_params_object,
    parse_run_id,
    parse_start_at,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1.5m", 90),
        ("45", 45),
        ("0.5", 0.5),
        (" 2H ", 7200),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "m5", "-1", "nan", "inf", "1e400", "5m-"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_start_at() -> None:
    assert parse_start_at("2030-01-02T03:04:05") == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_start_at("2030-01-02T03:04:05Z") == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_start_at("2030-01-02T05:04:05+02:00") == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_start_at("tomorrow")


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("n=3", ("n", 3)),
        ("x=1.5", ("x", 1.5)),
        ("flag=false", ("flag", False)),
        ("nothing=null", ("nothing", None)),
        ("who=world", ("who", "world")),
        ('quoted="3"', ("quoted", "3")),
        ("eq=a=b", ("eq", "a=b")),
        ("empty=", ("empty", "")),
        ("list=[1, 2]", ("list", [1, 2])),
    ],
)
def test_parse_param(pair: str, expected: tuple[str, Any]) -> None:
    assert parse_param(pair) == expected


@pytest.mark.parametrize("pair", ["novalue", "=3", " =3"])
def test_parse_param_refuses(pair: str) -> None:
    with pytest.raises(ValueError):
        parse_param(pair)


def test_parse_params_object() -> None:
    assert parse_params_object('{"a": [1]}') == {"a": [1]}
    for bad in ("[1]", "3", "{oops"):
        with pytest.raises(ValueError):
            parse_params_object(bad)


def test_parse_run_id_is_canonical() -> None:
    upper = "5C7D6BF0D50A443985E4B2609FAB3EE7"
    assert parse_run_id(upper) == "5c7d6bf0-d50a-4439-85e4-b2609fab3ee7"
    with pytest.raises(ValueError):
        parse_run_id("5c7d6bf0")
