"""Bundle benchmark: what shipping code through the object store costs.

    python -m bench.bundles [--quick]

Starts a private nats-server, ``python -m services.orchestrator`` and
``python -m services.runner`` (its own SLUICE_HOME), and measures:

* pack + upload, and fetch + verify + unpack, of a 1 MiB and a 20 MiB
  project folder (incompressible bytes, the worst case), cold (nothing
  cached) and cached (already unpacked: a marker check);
* create -> Completed p50 of single runs on an idle runner: a deployment
  whose code is at a path on the runner's host, beside the same flow shipped
  as a bundle (cached after its first run).

Writes ``bench/results/bundles.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from engine._stack.bundles import BundleCache, upload
from engine.client import Client
from engine.deployments import RunnerDeployment
from shared.settings import Settings

from ._harness import (
    REPO,
    ServiceProcess,
    backend_options,
    machine_info,
    markdown_table,
    running_nats_server,
)
from .runner import single_run, wait_serving

RESULTS = REPO / "bench" / "results" / "bundles.md"
FLOW = "from engine import flow\n\n\n@flow(name='{name}')\ndef noop() -> None:\n    return None\n"


def _project(folder: Path, name: str, size: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "flows.py").write_text(FLOW.format(name=name))
    if size:
        (folder / "payload.bin").write_bytes(os.urandom(size))
    return folder


async def _transfer(client: Client, tmp: Path, size: int, rounds: int) -> dict[str, float]:
    js = client.nc.jetstream()
    ups, colds, warms = [], [], []
    for i in range(rounds):
        folder = _project(tmp / f"p{size}-{i}", f"size{size}", size)
        started = time.perf_counter()
        bundle = await upload(js, folder, limit=size + 1024 * 1024)
        ups.append(time.perf_counter() - started)
        cache = BundleCache(tmp / f"cache{size}-{i}")
        started = time.perf_counter()
        await cache.fetch(js, bundle)
        colds.append(time.perf_counter() - started)
        started = time.perf_counter()
        await cache.fetch(js, bundle)
        warms.append(time.perf_counter() - started)
    return {
        "pack + upload": statistics.median(ups),
        "fetch + unpack, cold": statistics.median(colds),
        "cached": statistics.median(warms),
    }


async def measure(settings: Settings, runner: ServiceProcess, tmp: Path, singles: int) -> Any:
    async with Client(settings, connect_timeout=10) as client:
        await wait_serving(client, runner)
        transfers = {size: await _transfer(client, tmp, size, 3) for size in (1 << 20, 20 << 20)}
        at_path = _project(tmp / "at-path", "at-path", 0)
        shipped = _project(tmp / "shipped", "shipped", 0)
        await RunnerDeployment(
            name="d", flow_name="at-path", entrypoint="flows.py:noop", path=str(at_path)
        ).register(client)
        await RunnerDeployment(
            name="d",
            flow_name="shipped",
            entrypoint="flows.py:noop",
            path=str(shipped),
            bundle=True,
        ).register(client)
        for name in ("at-path/d", "shipped/d"):  # warm-up; the bundle is fetched here
            await single_run(client, name)
        latency: dict[str, list[float]] = {"at-path/d": [], "shipped/d": []}
        for _ in range(singles):
            for name in latency:  # alternate, so both see the same machine
                latency[name].append((await single_run(client, name))[1])
        return transfers, {k: statistics.median(v) for k, v in latency.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 single runs of each")
    args = parser.parse_args()
    singles = 5 if args.quick else 30
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        running_nats_server(Path(tmp_name) / "nats") as server,
    ):
        tmp = Path(tmp_name)
        env = {
            "SLUICE_NATS_URL": server.url,
            "SLUICE_HOME": str(tmp / "runner-home"),
            "SLUICE_LOG_LEVEL": "WARNING",
            "SLUICE_RUNNER_NAME": "bench",
        }
        orchestrator = ServiceProcess("services.orchestrator", env, tmp / "orch.log")
        runner = ServiceProcess("services.runner", env, tmp / "runner.log")
        orchestrator.start()
        runner.start()
        settings = Settings(nats_url=server.url, home=tmp / "client-home")
        try:
            transfers, latency = anyio.run(
                measure, settings, runner, tmp, singles, backend_options=backend_options()
            )
        finally:
            runner.stop()
            orchestrator.stop()
        info = machine_info(tmp)
    rows = [
        [f"{size >> 20} MiB", *(f"{v * 1000:.2f}" for v in t.values())]
        for size, t in transfers.items()
    ]
    added = (latency["shipped/d"] - latency["at-path/d"]) * 1000
    text = "\n".join(
        [
            "# Deployment bundles",
            "",
            f"`python -m bench.bundles{' --quick' if args.quick else ''}`; "
            + ", ".join(f"{k}: {v}" for k, v in info.items()),
            "",
            "## Moving a bundle (ms, median of 3; incompressible bytes)",
            "",
            markdown_table(
                ["project folder", "pack + upload", "fetch + verify + unpack, cold", "cached"],
                rows,
            ),
            "",
            f"## create -> Completed on an idle runner (p50 of {singles})",
            "",
            markdown_table(
                ["code", "p50 ms"],
                [
                    ["at a path on the runner's host", f"{latency['at-path/d'] * 1000:.1f}"],
                    ["a bundle, cached", f"{latency['shipped/d'] * 1000:.1f}"],
                ],
            ),
            "",
            f"A cached bundle adds {added:+.1f} ms to create -> Completed.",
            "",
        ]
    )
    print(text)
    if not args.quick:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
