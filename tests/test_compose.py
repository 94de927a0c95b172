"""docker-compose.yml, run without Docker: every service's own command as a local
process against a nats-server with the deploy/ configuration (users, permissions,
``sync_interval: always``), an example flow end to end through them, a
nats-server restart, and a clean shutdown on SIGTERM."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import yaml

from engine.client import Client
from shared.errors import StackUnavailable
from shared.models import FlowRun
from shared.states import StateType

from .deploy_support import (
    COMPOSE_FILE,
    REPO,
    is_sluice,
    load_compose,
    problems,
    replicas,
)
from .local_stack import LocalStack, started
from .ui.login import logged_in

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def test_the_compose_file_names_only_what_exists() -> None:
    assert problems(load_compose()) == []


def test_a_mistake_in_the_compose_file_is_found() -> None:
    compose = load_compose()
    broken = copy.deepcopy(compose)
    scheduler = broken["services"]["scheduler"]
    scheduler["command"] = ["python", "-m", "services.shceduler"]
    scheduler["environment"]["SLUICE_NATS_URLS"] = "nats://nats:4222"
    runner = broken["services"]["runner"]
    runner["command"] = [*runner["command"][:-1], "/app/examples/deployment.py"]
    broken["services"]["orchestrator"]["volumes"] = ["./exemples:/app/examples:ro"]
    found = "\n".join(problems(broken))
    assert "no module services.shceduler" in found
    assert "SLUICE_NATS_URLS" in found
    assert "/app/examples/deployment.py" in found
    assert "./exemples" in found


def test_the_compose_file_has_what_the_stack_needs() -> None:
    compose = load_compose()
    services = compose["services"]
    assert services["nats"]["image"].startswith("nats:")
    assert "nats-data:/data" in services["nats"]["volumes"]
    assert "nats-data" in compose["volumes"]
    sluice = {n for n, s in services.items() if is_sluice(s)}
    assert sluice == {"orchestrator", "scheduler", "cancellation-watcher", "runner", "ui"}
    assert all(services[n].get("healthcheck") for n in [*sluice, "nats"])
    assert replicas(services["runner"]) > 1
    assert {n for n, s in services.items() if "otel" in s.get("profiles", [])} == {
        "otel-collector",
        "jaeger",
        "prometheus",
    }
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    scraped = {t for job in prometheus["scrape_configs"] for c in job["dns_sd_configs"]
               for t in c["names"]}  # fmt: skip
    assert scraped == sluice  # every Sluice service, every replica (DNS lists them all)
    collector = yaml.safe_load((REPO / "deploy" / "otel" / "collector.yaml").read_text())
    for pipeline in collector["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(kind, [])) <= set(collector[kind])
    assert (
        "otel-collector" in services["orchestrator"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    )
    conf = (REPO / "deploy" / "nats" / "nats.conf").read_text()
    assert "sync_interval: always" in conf
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "\nUSER " in dockerfile
    assert COMPOSE_FILE.is_file()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started(tmp_path_factory.mktemp("compose")) as local:
        yield local


async def until(c: Client, run_id: str, *types: StateType, timeout: float = 90) -> FlowRun:
    with anyio.fail_after(timeout):
        while True:
            run = await c.read_flow_run(run_id)
            if run.state.type in types:
                return run
            await anyio.sleep(0.2)


async def create(c: Client, deployment: str, **parameters: object) -> FlowRun:
    """Create a run, retrying while the services are (re)connecting."""
    key = uuid.uuid4().hex
    with anyio.fail_after(60):
        while True:
            try:
                return await c.create_flow_run(
                    deployment, parameters=parameters, idempotency_key=key
                )
            except StackUnavailable:
                await anyio.sleep(0.2)


async def hello(stack: LocalStack, name: str) -> None:
    async with Client(stack.settings("client")) as c:
        run = await create(c, "hello-world/default", name=name)
        final = await until(c, run.id, StateType.COMPLETED, StateType.FAILED, StateType.CRASHED)
        assert final.state.type is StateType.COMPLETED, (final.state, stack.logs())
        lines = [r.message async for r in c.logs(run.id)]
        assert any(f"Hello, {name}!" in line for line in lines), lines


async def test_an_example_flow_runs_through_the_compose_services(stack: LocalStack) -> None:
    await hello(stack, "compose")
    async with Client(stack.settings("client")) as c:
        run = await create(c, "etl/default", sources=3, flaky=0.0)
        final = await until(c, run.id, StateType.COMPLETED, StateType.FAILED, StateType.CRASHED)
        assert final.state.type is StateType.COMPLETED, (final.state, stack.logs())
    assert stack.violations() == []


async def test_a_run_is_cancelled_through_the_compose_services(stack: LocalStack) -> None:
    async with Client(stack.settings("client")) as c:
        run = await c.create_flow_run("sleepy/default", parameters={"seconds": 60})
        await until(c, run.id, StateType.RUNNING)
        await c.cancel_flow_run(run.id)
        final = await until(c, run.id, StateType.CANCELLED, StateType.CRASHED, StateType.FAILED)
        assert final.state.type is StateType.CANCELLED, final.state
    assert stack.violations() == []


async def test_the_web_ui_serves_every_page_as_the_operator(stack: LocalStack) -> None:
    async with Client(stack.settings("client")) as c:
        run = await create(c, "hello-world/default", name="ui")
        await until(c, run.id, StateType.COMPLETED)
    (ui,) = stack.services["ui"]
    base = f"http://127.0.0.1:{ui.env['SLUICE_UI_PORT']}"

    # The compose file turns the UI's login on: a page asks for it first.
    def landing() -> str:
        asked = urllib.request.Request(base + "/runs", headers={"Accept": "text/html"})
        with urllib.request.urlopen(asked, timeout=30) as response:
            return str(response.url)

    assert "/login" in await anyio.to_thread.run_sync(landing)
    opener = await anyio.to_thread.run_sync(
        logged_in, base, ui.env["SLUICE_UI_USER"], ui.env["SLUICE_UI_PASSWORD"]
    )

    def get(page: str) -> tuple[int, str]:
        with opener.open(base + page, timeout=30) as response:
            return response.status, response.read().decode()

    for page in ("/", "/deployments", "/runners", f"/runs/{run.id}"):
        status, body = await anyio.to_thread.run_sync(get, page)
        assert status == 200, page
        assert run.id in body or page != "/"
    # Every read the pages made was within the operator's permissions.
    assert stack.violations() == []


def test_the_cli_works_as_the_client_user(stack: LocalStack) -> None:
    s = stack.settings("client")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        "SLUICE_NATS_URL": s.nats_url,
        "SLUICE_NATS_USER": "client",
        "SLUICE_NATS_PASSWORD": stack.password("client"),
        "SLUICE_HOME": str(s.home),
    }
    cli = [sys.executable, "-m", "engine.cli", "deployment", "run", "hello-world/default"]
    done = subprocess.run(
        [*cli, "--param", "name=Ada", "--watch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Hello, Ada!" in done.stdout
    assert stack.violations() == []


async def test_services_reconnect_after_a_nats_server_restart(stack: LocalStack) -> None:
    stack.stop_nats()
    stack.start_nats()
    await hello(stack, "again")
    assert all(p.alive() for ps in stack.services.values() for p in ps)


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


async def test_sigterm_stops_every_service_cleanly_and_settles_its_runs(
    stack: LocalStack,
) -> None:
    """The last test of the stack: it stops it."""
    async with Client(stack.settings("client")) as c:
        run = await c.create_flow_run("sleepy/default", parameters={"seconds": 120})
        running = await until(c, run.id, StateType.RUNNING)
        children = {
            child
            for proc in stack.services["runner"]
            for child in _children(proc.pid)
            if proc.alive()
        }
        assert children, "the flow-run process is a child of a runner"
        codes = {}
        for proc in stack.services["runner"]:
            codes[proc.name] = await anyio.to_thread.run_sync(proc.terminate)
        final = await until(c, run.id, StateType.CRASHED, StateType.COMPLETED, timeout=30)
        assert final.state.type is StateType.CRASHED
        assert running.runner and running.runner in (final.state.message or "")
        assert "shut down" in (final.state.message or "")
    for name in ("cancellation-watcher", "scheduler", "orchestrator"):
        for proc in stack.services[name]:
            codes[proc.name] = await anyio.to_thread.run_sync(proc.terminate)
    assert set(codes.values()) == {0}, (codes, stack.logs())
    with anyio.fail_after(30):  # no flow-run process outlives its runner
        while True:
            if all(_gone(pid) for pid in children):
                break
            await anyio.sleep(0.1)
    assert stack.violations() == []


SERVICE_MODULES = [
    "services.orchestrator",
    "services.scheduler",
    "services.cancellation_watcher",
    "services.runner",
    "services.ui",
]


@pytest.mark.parametrize("module", SERVICE_MODULES)
def test_each_service_runs_alone_and_explains_itself(module: str, tmp_path: Path) -> None:
    helped = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0, helped.stderr
    assert f"python -m {module}" in helped.stdout
    assert "--check" in helped.stdout and "SLUICE_NATS_URL" in helped.stdout
    # Its health check fails, saying why, when it does not run here.
    env = {**os.environ, "SLUICE_HOME": str(tmp_path)}
    checked = subprocess.run(
        [sys.executable, "-m", module, "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert checked.returncode == 1
    assert "not running here" in checked.stderr
