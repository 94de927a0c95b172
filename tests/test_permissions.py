"""Every role of deploy/nats/auth.conf, tried on every action of the matrix in
docs/security.md: stream, consumer, KV and object-store management through the
JetStream API, and the request subjects.

The table is read from the document, so the document and the server's
configuration cannot drift apart. An action counts as allowed when the server
(or the service behind the subject) answers at all, and as refused when no
answer comes and the server has logged the violation: a refused publish gets
no reply in NATS, so both are needed to tell a refusal from a slow answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import anyio
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from engine.client import Client
from shared import names, runlog
from shared.connection import connect
from shared.errors import StackUnavailable
from shared.messages import ProposedState, ProposeReply, ProposeState
from shared.states import StateType

from .deploy_support import REPO
from .local_stack import LocalStack, started

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROLES = ["orchestrator", "scheduler", "watcher", "runner", "client", "operator"]
#: Seconds an action waits for an answer that a refused one never gets.
WAIT = 5.0
#: Actions tried one phase after another, as each removes what the next uses;
#: the rest go in the middle phase.
FIRST = {"stream message delete"}
LAST = {"stream delete", "object store delete"}


def matrix() -> dict[str, dict[str, bool]]:
    """action -> role -> allowed, from the table in docs/security.md."""
    text = (REPO / "docs" / "security.md").read_text()
    table = text.split("<!-- matrix:start -->")[1].split("<!-- matrix:end -->")[0]
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in table.strip().splitlines()
    ]
    header, body = rows[0], rows[2:]
    assert header[1:] == ROLES, header
    out: dict[str, dict[str, bool]] = {}
    for row in body:
        assert set(row[1:]) <= {"yes", "no"}, row
        out[row[0]] = {role: cell == "yes" for role, cell in zip(ROLES, row[1:], strict=True)}
    return out


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def actions(role: str, durable: str) -> dict[str, tuple[str, bytes]]:
    """action -> (subject, body): each role works on its own scratch objects."""
    scratch = f"SCRATCH_{role.upper()}"
    stream = {"name": scratch, "subjects": [f"flowrun.permscratch.{role}.>"], "storage": "memory"}
    api = "$JS.API"
    return {
        "stream create": (
            f"{api}.STREAM.CREATE.ROGUE_{role}",
            _json({"name": f"ROGUE_{role}", "subjects": [f"rogue.{role}.>"], "storage": "memory"}),
        ),
        "stream update": (f"{api}.STREAM.UPDATE.{scratch}", _json({**stream, "max_msgs": 10})),
        "stream purge": (f"{api}.STREAM.PURGE.{scratch}", _json({})),
        "stream message delete": (f"{api}.STREAM.MSG.DELETE.{scratch}", _json({"seq": 1})),
        "stream delete": (f"{api}.STREAM.DELETE.{scratch}", b""),
        "stream info": (f"{api}.STREAM.INFO.{scratch}", b""),
        "consumer create, reading (ephemeral)": (
            f"{api}.CONSUMER.CREATE.{scratch}",
            _json(
                {
                    "stream_name": scratch,
                    "config": {
                        "ack_policy": "none",
                        "deliver_policy": "all",
                        "inactive_threshold": 5_000_000_000,
                    },
                }
            ),
        ),
        "run events consumer (KV_flow_runs)": (
            f"{api}.CONSUMER.CREATE.{runlog.STREAM}",
            _json(
                {
                    "stream_name": runlog.STREAM,
                    "config": {
                        "ack_policy": "none",
                        "deliver_policy": "last_per_subject",
                        "filter_subject": runlog.SUBJECTS,
                        "inactive_threshold": 5_000_000_000,
                    },
                }
            ),
        ),
        "dispatch consumer create or update": (
            f"{api}.CONSUMER.CREATE.{names.DISPATCH_STREAM}.rogue-{role}",
            _json(
                {
                    "stream_name": names.DISPATCH_STREAM,
                    "config": {
                        "durable_name": f"rogue-{role}",
                        "ack_policy": "explicit",
                        "max_ack_pending": 1,
                    },
                }
            ),
        ),
        "dispatch consumer create (legacy durable API)": (
            f"{api}.CONSUMER.DURABLE.CREATE.{names.DISPATCH_STREAM}.legacy-{role}",
            _json(
                {
                    "stream_name": names.DISPATCH_STREAM,
                    "config": {"durable_name": f"legacy-{role}", "ack_policy": "explicit"},
                }
            ),
        ),
        "consumer delete": (f"{api}.CONSUMER.DELETE.{scratch}.victim", b""),
        "dispatch item pull": (
            f"{api}.CONSUMER.MSG.NEXT.{names.DISPATCH_STREAM}.{durable}",
            _json({"batch": 1, "no_wait": True}),
        ),
        "KV bucket create": (
            f"{api}.STREAM.CREATE.KV_rogue_{role}",
            _json(
                {
                    "name": f"KV_rogue_{role}",
                    "subjects": [f"$KV.rogue_{role}.>"],
                    "storage": "memory",
                }
            ),
        ),
        "KV write flow_runs": (
            f"$KV.{names.FLOW_RUNS_BUCKET}.permission-probe-{role}",
            b"",  # for the allowed orchestrator: a delete marker of a key never used
        ),
        "KV write runner_heartbeats": (
            f"$KV.{names.HEARTBEATS_BUCKET}.permission-probe-{role}",
            b"",
        ),
        "object store create": (
            f"{api}.STREAM.CREATE.OBJ_rogue_{role}",
            _json(
                {
                    "name": f"OBJ_rogue_{role}",
                    "subjects": [f"$O.rogue_{role}.C.>", f"$O.rogue_{role}.M.>"],
                    "storage": "memory",
                    "allow_rollup_hdrs": True,
                }
            ),
        ),
        "object store put result": (
            f"$O.{names.RESULTS_BUCKET}.C.permission-probe-{role}",
            b"chunk",
        ),
        "object store purge results": (
            f"{api}.STREAM.PURGE.OBJ_{names.RESULTS_BUCKET}",
            _json({"filter": f"$O.{names.RESULTS_BUCKET}.C.permission-probe-none"}),
        ),
        "object store delete": (f"{api}.STREAM.DELETE.OBJ_scratch_{role}", b""),
        "object store put bundle": (
            f"$O.{names.BUNDLES_BUCKET}.C.permission-probe-{role}",
            b"chunk",
        ),
        "object store purge bundles": (
            f"{api}.STREAM.PURGE.OBJ_{names.BUNDLES_BUCKET}",
            _json({"filter": f"$O.{names.BUNDLES_BUCKET}.C.permission-probe-none"}),
        ),
        names.FLOWRUN_CREATE: (names.FLOWRUN_CREATE, b"{}"),
        names.FLOWRUN_PROPOSE: (names.FLOWRUN_PROPOSE, b"{}"),
        names.FLOWRUN_RETRY: (names.FLOWRUN_RETRY, b"{}"),
        names.FLOWRUN_CANCEL: (names.FLOWRUN_CANCEL, b"{}"),
        names.FLOWRUN_DELETE: (names.FLOWRUN_DELETE, b"{}"),
        names.RUNNER_HEARTBEAT: (names.RUNNER_HEARTBEAT, b"{}"),
        names.RUNNER_CONSUMER: (names.RUNNER_CONSUMER, b"{}"),
        names.DEPLOYMENT_REGISTER: (names.DEPLOYMENT_REGISTER, b"{}"),
        names.DEPLOYMENT_DELETE: (names.DEPLOYMENT_DELETE, b"{}"),
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started(tmp_path_factory.mktemp("permissions"), only=["orchestrator"]) as local:
        yield local


async def _scratch(stack: LocalStack) -> str:
    """Each role's scratch stream (with a message and a consumer) and object
    store, made as the orchestrator; and the runners' dispatch consumer."""
    nc = await connect(stack.settings("orchestrator"), name="test-setup", wait=10)
    try:
        js = nc.jetstream()
        for role in ROLES:
            scratch = f"SCRATCH_{role.upper()}"
            await js.add_stream(
                name=scratch, subjects=[f"flowrun.permscratch.{role}.>"], storage="memory"
            )
            await js.publish(f"flowrun.permscratch.{role}.x", b"x")
            await js.add_consumer(scratch, durable_name="victim")
            await js.create_object_store(f"scratch_{role}", storage="memory")
    finally:
        await nc.close()
    async with Client(stack.settings("runner")) as runner:
        made = await runner.dispatch_consumer([f"{names.DISPATCH_PREFIX}.permissions.>"])
    return made.durable


async def _answered(nc: NATS, subject: str, body: bytes) -> bytes | None:
    try:
        return (await nc.request(subject, body, timeout=WAIT)).data
    except (nats.errors.TimeoutError, TimeoutError):
        return None


async def test_every_role_may_do_exactly_what_the_matrix_says(stack: LocalStack) -> None:
    expected = matrix()
    durable = await _scratch(stack)
    found: dict[str, dict[str, bool]] = {a: {} for a in expected}
    subjects: dict[tuple[str, str], str] = {}
    errors: list[str] = []

    async def try_role(role: str) -> None:
        nc = await connect(stack.settings(role), name=f"test-{role}", wait=10)
        try:
            todo = actions(role, durable)
            assert set(todo) == set(expected), set(todo) ^ set(expected)

            async def one(action: str) -> None:
                subject, body = todo[action]
                subjects[(action, role)] = subject
                reply = await _answered(nc, subject, body)
                found[action][role] = reply is not None
                if reply and subject.startswith("$JS.API.") and b'"error"' in reply:
                    errors.append(f"{role} / {action}: allowed but failed: {reply!r}")

            for phase in (FIRST, set(expected) - FIRST - LAST, LAST):
                async with anyio.create_task_group() as tg:
                    for action in phase:
                        tg.start_soon(one, action)
        finally:
            await nc.close()

    async with anyio.create_task_group() as tg:
        for role in ROLES:
            tg.start_soon(try_role, role)

    assert found == expected, "\n".join(
        f"{action} as {role}: expected {'allowed' if want else 'refused'}"
        for action, row in expected.items()
        for role, want in row.items()
        if found[action][role] != want
    )
    assert not errors, "\n".join(errors)
    # A refusal is the server's, not a slow answer: each one is in its log.
    with anyio.fail_after(30):
        while True:
            log = "\n".join(stack.violations())
            missing = [
                f"{role}: {subjects[(action, role)]}"
                for action, row in expected.items()
                for role, allowed in row.items()
                if not allowed
                and f'user:{role}" - Publish Violation - Subject "{subjects[(action, role)]}"'
                not in log
            ]
            if not missing:
                break
            await anyio.sleep(0.2)


async def test_a_runner_cannot_change_the_dispatch_consumer_all_runners_share(
    stack: LocalStack,
) -> None:
    async with Client(stack.settings("runner")) as runner:
        made = await runner.dispatch_consumer([f"{names.DISPATCH_PREFIX}.shared.>"])
        js = runner.nc.jetstream(timeout=WAIT)
        before = await js.consumer_info(made.stream, made.durable)
        config = {**before.config.as_dict(), "max_ack_pending": 1}
        reply = await _answered(
            runner.nc,
            f"$JS.API.CONSUMER.CREATE.{made.stream}.{made.durable}",
            _json({"stream_name": made.stream, "config": config}),
        )
        assert reply is None
        after = await js.consumer_info(made.stream, made.durable)
        assert after.config.max_ack_pending == before.config.max_ack_pending
        # Asking again is harmless: the same consumer, the orchestrator's configuration.
        again = await runner.dispatch_consumer([f"{names.DISPATCH_PREFIX}.shared.>"])
        assert again == made
    # A filter outside the dispatch subjects is malformed, naming the field.
    async with Client(stack.settings("runner")) as runner:
        with pytest.raises(Exception, match="filters"):
            await runner.dispatch_consumer(["flowrun.events.>"])


async def test_a_runner_cannot_retry_a_run_only_an_operator_can(
    stack: LocalStack, unique: str
) -> None:
    async with Client(stack.settings("operator")) as operator:
        run = await operator.create_flow_run(flow_name=f"perm-{unique}", agentless=True)
        done = await operator.propose_state(run.id, ProposedState(type=StateType.CANCELLED))
        assert done.status == "ACCEPT"
    async with Client(stack.settings("runner", request_timeout=WAIT)) as runner:
        # On the proposers' subject a retry is refused, and says where retries go...
        reply = await runner._request(
            names.FLOWRUN_PROPOSE,
            ProposeState(
                id=run.id,
                state=ProposedState(type=StateType.SCHEDULED, name="AwaitingRetry"),
                transition_id=f"retry-{unique}",
                retry=True,
            ),
            ProposeReply,
        )
        assert reply.status == "REJECT"
        assert reply.reason is not None and "flowrun.retry" in reply.reason
        assert reply.state.type is StateType.CANCELLED
        # ...and the retry subject is the operator's alone.
        with pytest.raises(StackUnavailable):
            await runner.retry_flow_run(run.id)
    async with Client(stack.settings("operator")) as operator:
        assert (await operator.read_flow_run(run.id)).state.type is StateType.CANCELLED
        retried = await operator.retry_flow_run(run.id)
        assert retried.state.type is StateType.SCHEDULED
        # flowrun.retry takes retries only.
        with pytest.raises(Exception, match="retry: true"):
            await operator._request(
                names.FLOWRUN_RETRY,
                ProposeState(id=run.id, state=ProposedState(type=StateType.CANCELLED)),
                dict,
            )


def test_the_matrix_covers_every_role_and_jetstream_action() -> None:
    table = matrix()
    kinds = {"stream", "consumer", "KV", "object store", "dispatch"}
    assert all(any(k in action for action in table) for k in kinds)
    for verb in ("create", "update", "purge", "delete"):
        assert any(verb in a and "stream" in a for a in table), verb
    for row in table.values():
        assert set(row) == set(ROLES)
    assert re.search(r"Runner identity", (REPO / "docs" / "security.md").read_text())
    assert Path(REPO / "deploy" / "nats" / "auth.conf").is_file()
