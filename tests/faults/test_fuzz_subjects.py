"""Every request subject in shared/names.py, fuzzed; replayed and stale proposals.

Beyond tests/test_bad_input.py (which covers the orchestrator's flow-run and
deployment subjects with junk): the scheduler's ``deployment.backfill``, the
orchestrator's ``runner.heartbeat`` and a runner's ``runner.kill.<name>``
too, and mutations of *valid* requests — a field dropped, retyped, made huge
or deeply nested — aimed at real runs. Afterwards the history checker must
find every stored transition legal: no input, however odd, moves a run
where the rules forbid.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from engine.client import Client
from engine.deployments import RunnerDeployment
from engine.runner import Runner
from services.dev import NatsServer
from services.orchestrator import Orchestrator
from services.scheduler import Scheduler
from shared import names
from shared.errors import _BY_CODE
from shared.messages import Decision, ProposedState, RegisterDeployment
from shared.settings import Settings
from shared.states import StateType
from tests.runner._script import ScriptFlowRunner

from ._history import History
from ._stack import verify

RUNNER = "fuzz-runner"
KILL = names.runner_kill_subject(RUNNER)
NO_RUN = "00000000-0000-4000-8000-00000000f022"
KNOWN_CODES = set(_BY_CODE) - {"error", "internal"}


def request_subjects() -> list[str]:
    """Every request/reply subject names.py declares (a runner's kill subject for the prefix)."""
    out = []
    for attr in dir(names):
        value = getattr(names, attr)
        is_subject = isinstance(value, str) and "." in value and not attr.endswith("PREFIX")
        if is_subject and attr.startswith(("FLOWRUN_", "DEPLOYMENT_", "RUNNER_")):
            out.append(value)
    return sorted({*out, KILL})


SUBJECTS = request_subjects()


class Fuzz:
    def __init__(self, portal: BlockingPortal, nc: NATS, settings: Settings) -> None:
        self.portal, self.nc, self.settings = portal, nc, settings
        self.run_ids: list[str] = []
        self.deployment_id = ""
        self.sent = 0

    def ask(self, subject: str, data: bytes) -> Any:
        async def go() -> bytes:
            return (await self.nc.request(subject, data, timeout=10)).data

        self.sent += 1
        return json.loads(self.portal.call(go))


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    """Orchestrator, scheduler and a runner in a background loop, on a server of their own."""
    tmp: Path = tmp_path_factory.mktemp("fuzz-subjects")
    server = NatsServer(tmp / "nats")
    server.start()
    settings = Settings(nats_url=server.url, home=tmp / "home", heartbeat_interval=0.5)
    runner = Runner(name=RUNNER, settings=settings, flow_runner=ScriptFlowRunner(), limit=2)
    try:
        with start_blocking_portal(backend_options={"use_uvloop": False}) as portal:
            orch = portal.wrap_async_context_manager(Orchestrator(settings, grace=1))
            sched = portal.wrap_async_context_manager(Scheduler(settings, grace=1))
            with orch, sched:
                nc = portal.call(nats.connect, server.url)
                f = Fuzz(portal, nc, settings)
                f.deployment_id = portal.call(
                    runner.aadd_deployment,
                    RunnerDeployment(
                        name="d",
                        flow_name="fuzzed",
                        entrypoint="x.py:f",
                        path=".",
                        concurrency_limit=2,
                    ),
                )
                portal.start_task_soon(runner.astart)

                async def seed_runs() -> list[str]:
                    async with Client(settings) as c:
                        return [
                            (await c.create_flow_run("fuzzed/d", parameters={"sleep": 0.05})).id
                            for _ in range(6)
                        ]

                f.run_ids = portal.call(seed_runs)
                yield f
                portal.call(runner.astop)
                portal.call(nc.close)
    finally:
        server.stop()


def assert_well_formed(reply: Any) -> None:
    assert isinstance(reply, dict), reply
    if "error" in reply:
        assert reply["error"]["code"] in KNOWN_CODES, reply
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]


# --- strategies --------------------------------------------------------------------
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
huge_or_deep = st.sampled_from(
    [
        "x" * 900_000,
        [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
        {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {}}}}}}}}}},
        2**64,
        -1,
        1e308,
        "",
        "\x00\ud7ff\ufeff",
        list(range(5000)),
    ]
)


def valid_body(subject: str, run_id: str, deployment_id: str) -> dict[str, Any]:
    """A request that the subject would accept, to mutate."""
    state = {"type": "RUNNING", "message": "fuzz"}
    return {
        names.FLOWRUN_CREATE: {"deployment": "fuzzed/d", "parameters": {"sleep": 0.01}},
        names.FLOWRUN_PROPOSE: {"id": run_id, "state": state, "attempt": 1, "transition_id": "t"},
        names.FLOWRUN_CANCEL: {"id": run_id},
        names.FLOWRUN_READ: {"id": run_id},
        names.FLOWRUN_LIST: {"states": ["COMPLETED"], "limit": 5},
        # No such run: the fuzzed runs must stay for the invariants checked at the end.
        names.FLOWRUN_DELETE: {"id": NO_RUN, "reason": "fuzz", "scheduled_only": True},
        names.DEPLOYMENT_REGISTER: {"name": "d2", "flow_name": "fuzzed2"},
        names.DEPLOYMENT_READ: {"id": deployment_id},
        names.DEPLOYMENT_LIST: {"limit": 5},
        names.DEPLOYMENT_PAUSE: {"name": "fuzzed2/d2"},
        names.DEPLOYMENT_RESUME: {"name": "fuzzed2/d2"},
        names.DEPLOYMENT_DELETE: {"name": "fuzzed2/never"},
        names.DEPLOYMENT_BACKFILL: {"id": deployment_id, "start": "2030-01-01T00:00:00Z"},
        names.RUNNER_HEARTBEAT: {"runner": "fuzz-ghost", "interval": 5, "runs": []},
        names.FLOWRUN_RETRY: {
            "id": run_id,
            "state": {"type": "SCHEDULED"},
            "retry": True,
            "transition_id": "r",
        },
        names.RUNNER_CONSUMER: {"filters": ["flowrun.dispatch.fuzz.>"]},
        KILL: {"id": run_id, "attempt": 1, "grace_seconds": 0},
    }[subject]


@st.composite
def mutated(draw: st.DrawFn, body: dict[str, Any]) -> bytes:
    body = dict(body)
    how = draw(st.sampled_from(["drop", "retype", "huge", "extra", "nest", "raw"]))
    key = draw(st.sampled_from(sorted(body))) if body else "id"
    if how == "drop":
        body.pop(key, None)
    elif how == "retype":
        body[key] = draw(json_values)
    elif how == "huge":
        body[key] = draw(huge_or_deep)
    elif how == "extra":
        body[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    elif how == "nest":
        body = {"wrapped": body}
    else:
        return draw(st.binary(max_size=256))
    return json.dumps(body).encode()


@hsettings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_subject_survives_mutated_requests(fuzz: Fuzz, data: st.DataObject) -> None:
    subject = data.draw(st.sampled_from(SUBJECTS))
    run_id = data.draw(st.sampled_from(fuzz.run_ids))
    body = data.draw(mutated(valid_body(subject, run_id, fuzz.deployment_id)))
    assert_well_formed(fuzz.ask(subject, body))


def test_subjects_cover_names_py() -> None:
    assert {
        names.FLOWRUN_CREATE,
        names.FLOWRUN_PROPOSE,
        names.FLOWRUN_CANCEL,
        names.FLOWRUN_READ,
        names.FLOWRUN_LIST,
        names.FLOWRUN_DELETE,
        names.DEPLOYMENT_REGISTER,
        names.DEPLOYMENT_READ,
        names.DEPLOYMENT_LIST,
        names.DEPLOYMENT_PAUSE,
        names.DEPLOYMENT_RESUME,
        names.DEPLOYMENT_DELETE,
        names.DEPLOYMENT_BACKFILL,
        names.RUNNER_HEARTBEAT,
        names.FLOWRUN_RETRY,
        names.RUNNER_CONSUMER,
        KILL,
    } == set(SUBJECTS)


@pytest.mark.parametrize("depth", [100, 10_000])
@pytest.mark.parametrize("subject", SUBJECTS)
def test_deeply_nested_bodies(fuzz: Fuzz, subject: str, depth: int) -> None:
    body = ("[" * depth + "]" * depth).encode()
    assert_well_formed(fuzz.ask(subject, body))
    deep = ('{"id": ' + "[" * depth + "]" * depth + "}").encode()
    assert_well_formed(fuzz.ask(subject, deep))


states = st.sampled_from(list(StateType))


@hsettings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    type_=states,
    attempt=st.none() | st.integers(min_value=-1, max_value=4),
    retry=st.booleans(),
    release=st.booleans(),
    tid=st.none() | st.sampled_from(["a", "b", "c"]),
    runner=st.none() | st.sampled_from([RUNNER, "intruder"]),
    data=st.data(),
)
def test_fuzzed_proposals_on_real_runs(
    fuzz: Fuzz,
    type_: StateType,
    attempt: int | None,
    retry: bool,
    release: bool,
    tid: str | None,
    runner: str | None,
    data: st.DataObject,
) -> None:
    """Well-typed but arbitrary proposals: whatever is accepted must be legal (checked below)."""
    body = {
        "id": data.draw(st.sampled_from(fuzz.run_ids)),
        "state": {"type": type_.value},
        "attempt": attempt,
        "retry": retry,
        "release": release,
        "transition_id": tid,
        "runner": runner,
    }
    reply = fuzz.ask(names.FLOWRUN_PROPOSE, json.dumps(body).encode())
    assert_well_formed(reply)
    if "error" not in reply:
        assert reply["status"] in {d.value for d in Decision}


def test_replayed_and_stale_proposals_change_nothing(fuzz: Fuzz) -> None:
    async def scenario() -> None:
        async with Client(fuzz.settings) as c:
            # A deployment of its own: no concurrency limit the fuzzing may have filled.
            await c.register_deployment(RegisterDeployment(name="plain", flow_name="replayed"))
            run = await c.create_flow_run("replayed/plain", agentless=True)
            claim = await c.propose_state(
                run.id, ProposedState(type=StateType.PENDING), transition_id="claim", runner="me"
            )
            assert claim.status is Decision.ACCEPT and claim.attempt == 1
            before = await c._read_with_revision(run.id)
            # The same transition again (a retry after a lost reply): ACCEPT, nothing written.
            again = await c.propose_state(
                run.id, ProposedState(type=StateType.PENDING), transition_id="claim", runner="me"
            )
            assert again.status is Decision.ACCEPT and again.revision == before[1]
            # A second claim, and reports from a stale or a future attempt: refused.
            for proposal in [
                dict(state=ProposedState(type=StateType.PENDING), runner="other"),
                dict(state=ProposedState(type=StateType.RUNNING), attempt=0),
                dict(state=ProposedState(type=StateType.COMPLETED), attempt=2),
            ]:
                reply = await c.propose_state(run.id, **proposal)  # type: ignore[arg-type]
                assert reply.status is Decision.ABORT, (proposal, reply)
            assert await c._read_with_revision(run.id) == before
            done = await c.propose_state(
                run.id, ProposedState(type=StateType.COMPLETED), attempt=1, transition_id="end"
            )
            assert done.status is Decision.ACCEPT
            # Replaying the very first claim after the run ended is still harmless.
            late = await c.propose_state(
                run.id, ProposedState(type=StateType.PENDING), transition_id="claim", runner="me"
            )
            assert late.status is Decision.ACCEPT and late.revision == done.revision
            assert (await c.read_flow_run(run.id)).state.type is StateType.COMPLETED

    fuzz.portal.call(scenario)


def test_after_the_abuse_every_invariant_holds(fuzz: Fuzz) -> None:
    """Still serving, and every transition the fuzzing caused was legal."""
    history = History()

    async def final() -> None:
        async with Client(fuzz.settings) as c:
            run = await c.create_flow_run("fuzzed/d", parameters={"sleep": 0})
            assert run.state.type is StateType.SCHEDULED
            await verify(fuzz.settings, history, [fuzz.deployment_id], finished=False, timeout=30)

    fuzz.portal.call(final)
    print(f"bad inputs sent: {fuzz.sent}")
