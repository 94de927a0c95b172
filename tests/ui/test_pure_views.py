"""The UI's pure parts behind the new views: attempts, the Gantt, the runs query, the chart,
lost runners, labels and the access rules (login, sessions, CSRF tokens)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.ui._auth import Access, hash_password, session_cookie, verify_password
from services.ui._format import AWAITING_SLOT, duration, state_class, when_html
from services.ui._gantt import attempts_of, fold_task_runs, layout
from services.ui._reads import LOST_FOR, RunnerView, with_lost
from services.ui._runlist import RunQuery, chart
from shared.messages import RunnerStatus, TaskRunRecord
from shared.models import FlowRun
from shared.states import State, StateDetails, StateType

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _state(kind: StateType, name: str, at: float, due: float | None = None) -> State:
    details = StateDetails(scheduled_time=_at(due)) if due is not None else StateDetails()
    return State(type=kind, name=name, timestamp=_at(at), details=details)


def _record(task: str, state: State, upstream: list[str] | None = None) -> TaskRunRecord:
    return TaskRunRecord(
        flow_run_id="00000000-0000-0000-0000-000000000001",
        task_run_id=task,
        task_key=f"{task}:0",
        task_name=task,
        name=f"{task}-0",
        state=state,
        upstream_ids=upstream or [],
        flow_run_attempt=1,
    )


def test_a_retried_task_has_one_attempt_per_try_even_without_running_records() -> None:
    # What a quick flaky task reports: its Running states are left out.
    states = [
        _state(StateType.PENDING, "Pending", 0),
        _state(StateType.SCHEDULED, "AwaitingRetry", 0.1, due=0.2),
        _state(StateType.SCHEDULED, "AwaitingRetry", 0.5, due=1.0),
        _state(StateType.FAILED, "Failed", 1.3),
    ]
    found = attempts_of(states)
    assert [(a.started, a.ended) for a in found] == [
        (_at(0), _at(0.1)),
        (_at(0.2), _at(0.5)),
        (_at(1.0), _at(1.3)),
    ]
    assert [a.outcome.name for a in found if a.outcome] == ["AwaitingRetry"] * 2 + ["Failed"]


def test_a_flow_run_retried_after_it_ended_counts_only_the_time_it_ran() -> None:
    states = [
        _state(StateType.SCHEDULED, "Scheduled", 0),
        _state(StateType.PENDING, "Pending", 1),
        _state(StateType.RUNNING, "Running", 2),
        _state(StateType.FAILED, "Failed", 2.2),
        _state(StateType.SCHEDULED, "AwaitingRetry", 180),
        _state(StateType.PENDING, "Pending", 181),
        _state(StateType.RUNNING, "Running", 182),
        _state(StateType.COMPLETED, "Completed", 182.2),
    ]
    seconds = [round(a.seconds(_at(999)), 3) for a in attempts_of(states)]
    assert seconds == [0.2, 0.2]
    run = FlowRun(
        id="r",
        name="r",
        flow_name="f",
        state=states[-1],
        created=T0,
        updated=T0,
        expected_start_time=T0,
        start_time=_at(2),
        end_time=_at(182.2),
        run_count=2,
    )
    assert duration(run, seconds) == "200ms + 200ms"  # not "3m"
    assert duration(run) == "3m"  # without its history: start to end


def test_a_try_that_failed_before_its_pending_record_still_counts() -> None:
    states = [
        _state(StateType.SCHEDULED, "AwaitingRetry", 0.1, due=0.2),
        _state(StateType.SCHEDULED, "AwaitingRetry", 0.3, due=0.5),
        _state(StateType.FAILED, "Failed", 0.6),
    ]
    assert [(a.started, a.ended) for a in attempts_of(states)] == [
        (_at(0.1), _at(0.1)),
        (_at(0.2), _at(0.3)),
        (_at(0.5), _at(0.6)),
    ]


def test_a_running_attempt_is_open_ended() -> None:
    (only,) = attempts_of([_state(StateType.RUNNING, "Running", 5)])
    assert only.ended is None and only.seconds(_at(7)) == 2


def test_the_gantt_has_a_bar_per_attempt_and_edges_to_upstreams() -> None:
    records = [
        _record("a", _state(StateType.RUNNING, "Running", 0)),
        _record("a", _state(StateType.COMPLETED, "Completed", 1)),
        _record("b", _state(StateType.PENDING, "Pending", 1), upstream=["a"]),
        _record("b", _state(StateType.SCHEDULED, "AwaitingRetry", 1.5, due=2)),
        _record("b", _state(StateType.COMPLETED, "Completed", 3)),
        _record("b", _state(StateType.COMPLETED, "Completed", 3)),  # a replayed record
    ]
    views = fold_task_runs(records)
    assert [(v.name, v.attempt) for v in views] == [("a-0", 1), ("b-0", 2)]
    gantt = layout(views, _at(10))
    bars = {row.view.name: row.bars for row in gantt.rows}
    assert [b.css for b in bars["b-0"]] == ["st-awaitingretry", "st-completed"]
    assert bars["a-0"][0].x < bars["b-0"][0].x < bars["b-0"][1].x
    (edge,) = gantt.edges
    assert (edge.upstream, edge.downstream) == ("a", "b")
    assert gantt.ticks[0].label == "+0.00s" and gantt.ticks[-1].label == "+3.0s"
    assert layout([], _at(0)).rows == []


def test_runs_query_reads_several_states_a_range_and_the_tab() -> None:
    from starlette.requests import Request

    scope = {
        "type": "http",
        "query_string": b"state=FAILED&state=Late,CRASHED&range=24h&tab=upcoming&offset=oops",
        "headers": [],
    }
    query = RunQuery.of(Request(scope))
    assert query.states == ["FAILED", "Late", "CRASHED"]
    assert query.upcoming and query.range == "24h" and query.offset == 0
    assert query.window(T0) == (T0, T0 + timedelta(days=1))
    assert RunQuery(range="1h").window(T0) == (T0 - timedelta(hours=1), T0)
    assert RunQuery().window(T0) == (None, T0)
    assert query.url(tab="", state=["FAILED"]) == "/runs?state=FAILED&range=24h"
    bogus = RunQuery.of(Request({**scope, "query_string": b"range=forever"}))
    assert bogus.range == ""


def _run(state: StateType, at: float) -> FlowRun:
    s = State(type=state, name=state.value.title(), timestamp=_at(at))
    return FlowRun(
        id=f"{state}-{at}",
        name="r",
        flow_name="f",
        state=s,
        created=T0,
        updated=T0,
        expected_start_time=_at(at),
    )


def test_the_activity_chart_stacks_runs_by_state_per_slice() -> None:
    runs = [
        _run(StateType.COMPLETED, 10),
        _run(StateType.FAILED, 20),
        _run(StateType.COMPLETED, 4000),  # the next hour
        _run(StateType.COMPLETED, -5),  # before the range: left out
    ]
    found = chart(runs, T0, T0 + timedelta(hours=24), buckets=24)
    assert found.peak == 2 and found.counted == 3 and not found.capped
    first = found.columns[0].parts
    assert [(kind, n) for kind, _, _, n in first] == [("COMPLETED", 1), ("FAILED", 1)]
    assert sum(h for _, _, h, _ in first) == pytest.approx(found.height)
    assert found.legend == ["COMPLETED", "FAILED"]


def test_a_lost_runner_stays_listed_for_a_while() -> None:
    status = RunnerStatus(runner="r1", at=T0, interval=5, queues=["default"])
    seen: dict[str, RunnerStatus] = {}
    alive = [RunnerView(status=status, alive=True)]
    assert [v.alive for v in with_lost(alive, seen, T0)] == [True]
    (gone,) = with_lost([], seen, T0 + timedelta(minutes=1))
    assert not gone.alive and gone.gone and gone.status.queues == ["default"]
    assert with_lost([], seen, T0 + LOST_FOR + timedelta(seconds=1)) == []
    assert seen == {}


def test_each_state_has_its_own_class_and_the_slot_label_its_own() -> None:
    classes = {state_class(State(type=t, name=t.value.title(), timestamp=T0)) for t in StateType}
    assert len(classes) == len(StateType)
    scheduled = State(type=StateType.SCHEDULED, name="Scheduled", timestamp=T0)
    retry = State(type=StateType.SCHEDULED, name="AwaitingRetry", timestamp=T0)
    assert state_class(retry) == "st-awaitingretry" != state_class(scheduled)
    assert state_class(scheduled, AWAITING_SLOT) == "st-awaitingconcurrencyslot"


def test_times_go_to_the_browser_as_utc_with_utc_on_hover() -> None:
    html = str(when_html(_at(0.123), precise=True))
    assert 'datetime="2026-11-21T12:00:00.123000+00:00"' in html
    assert 'title="2026-11-21 12:00:00.123 UTC"' in html and "data-precise" in html
    assert str(when_html(None)) == "—"


def test_passwords_hash_and_verify() -> None:
    hashed = hash_password("s3cret")
    assert hashed.startswith("pbkdf2_sha256$") and "s3cret" not in hashed
    assert verify_password("s3cret", hashed)
    assert not verify_password("S3cret", hashed)
    assert not verify_password("s3cret", "md5$nope")
    assert not verify_password("s3cret", "garbage")


def test_access_from_the_environment() -> None:
    assert not Access.from_env({}).login
    one = Access.from_env({"SLUICE_UI_PASSWORD": "pw", "SLUICE_UI_READ_ONLY": "yes"})
    assert one.login and one.read_only and one.check("admin", "pw")
    assert not one.check("admin", "wrong") and not one.check("nobody", "pw")
    many = Access.from_env(
        {"SLUICE_UI_USERS": f"ada:{hash_password('a')}, bob:{hash_password('b')}"}
    )
    assert many.check("ada", "a") and many.check("bob", "b") and not many.check("ada", "b")
    with pytest.raises(ValueError, match="NAME:HASH"):
        Access.from_env({"SLUICE_UI_USERS": "ada:plaintext"})


def test_sessions_are_signed_and_expire() -> None:
    access = Access.from_env({"SLUICE_UI_PASSWORD": "pw", "SLUICE_UI_SECRET": "k"})
    now = T0.timestamp()
    cookie = access.session_for("admin", now)
    assert access.user_of(cookie, now) == "admin"
    assert access.user_of(cookie, now + 13 * 3600) is None  # expired
    body, mac = cookie.rsplit(".", 1)
    assert access.user_of(f"{body}.{'0' * len(mac)}", now) is None  # forged
    other = Access.from_env({"SLUICE_UI_PASSWORD": "pw", "SLUICE_UI_SECRET": "other"})
    assert other.user_of(cookie, now) is None  # another server's secret
    assert access.csrf_for("browser-1") != access.csrf_for("browser-2")


def test_session_cookies_are_http_only_and_secure_over_https() -> None:
    access = Access.from_env({"SLUICE_UI_PASSWORD": "pw"})
    plain = session_cookie(access, "admin")
    assert "HttpOnly" in plain and "SameSite=Lax" in plain and "Secure" not in plain
    assert "; Secure" in session_cookie(access, "admin", secure=True)
    assert "Max-Age=0" in session_cookie(access, None)  # logging out
