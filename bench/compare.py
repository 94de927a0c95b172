"""Sluice beside Prefect 3: the same trivial work on both, alternately, in one run.

    python -m bench.compare                # full run (about 15 min), writes bench/RESULTS.md
    python -m bench.compare --quick        # a short smoke run; prints, writes only with --output
    python -m bench.compare --sides sluice --scenarios import --quick --output /tmp/r.md

Installs Prefect into ``bench/.prefect-venv`` first if it is missing (see
:mod:`bench._prefect_venv`); ``--sides sluice`` never touches it. Scenarios:

* ``import``: time and peak memory of importing each SDK in a fresh interpreter;
* ``tasks``: a flow of 1,000 no-op tasks, called locally with no server;
* ``stack``: per round and side, a stack started from nothing until it serves the
  no-op deployment and ran a first run; its idle memory; the 1,000 tasks again
  reporting to it; single runs on the idle runner; cancels of a sleeping run;
  and (first round only, for time) 200 runs through its runner with limit 8.

Sides alternate within every round, and who goes first rotates from round to
round, so drifting background load spreads over both. Sluice's stack runs
twice per round: with a fresh process per run and with the runner's fork server.
A step that fails is recorded in the report and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _prefect_venv
from ._compare_report import PREFECT, SLUICE, SLUICE_FORK, SLUICE_FRESH, Figures, write_report
from ._harness import REPO, ForeignLoad, interrupt_on_signals
from ._procmem import tree_memory
from ._stacks import PREFECT_SIDE, PrefectStack, SluiceStack, Stack, prefect_env, sluice_env

RESULTS = REPO / "bench" / "RESULTS.md"
SCENARIOS = ("import", "tasks", "stack")
IMPORTS = {SLUICE: "from engine import flow, task", PREFECT: "from prefect import flow, task"}
PROBE = REPO / "bench" / "_import_probe.py"
LOGS = Path(tempfile.gettempdir()) / "sluice-bench-compare-logs"
TASKS_SCENARIO = "{n:,} no-op tasks in one flow (local executor, sequential)"
SETTLE_S = 3.0
"""Seconds a freshly started stack is left alone before its idle memory is read."""


@dataclass(frozen=True)
class Plan:
    import_rounds: int
    tasks: int
    task_rounds: int
    stack_rounds: int
    singles: int
    cancels: int
    batch: int
    batch_rounds: int


FULL = Plan(
    import_rounds=5,
    tasks=1000,
    task_rounds=3,
    stack_rounds=3,
    singles=8,
    cancels=2,
    batch=200,
    batch_rounds=1,
)
"""About 15 minutes on 2 quiet cores, most of it Prefect's 200-run batch."""
QUICK = Plan(
    import_rounds=2,
    tasks=100,
    task_rounds=1,
    stack_rounds=1,
    singles=3,
    cancels=1,
    batch=16,
    batch_rounds=1,
)


def rotated(items: list[str], by: int) -> list[str]:
    by %= max(len(items), 1)
    return items[by:] + items[:by]


def run_json(argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> Any:
    """Run a probe script; the JSON on the last line of its output."""
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        tail = "\n".join(out.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"{shlex.join(argv)} exited with {out.returncode}:\n{tail}")
    return json.loads(lines[-1])


class Comparison:
    def __init__(self, plan: Plan, sides: list[str], scenarios: list[str]) -> None:
        self.plan = plan
        self.sides = sides
        self.scenarios = scenarios
        self.figures = Figures()
        self.errors: list[str] = []

    # --- bookkeeping ------------------------------------------------------------------
    def say(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def attempt(self, what: str, step: Callable[[], object]) -> bool:
        try:
            step()
            return True
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            self.say(f"FAILED {what}: {exc}")
            traceback.print_exc(file=sys.stderr)
            return False

    def sdk_sides(self) -> list[str]:
        return [s for s in (SLUICE, PREFECT) if s.split()[0].lower() in self.sides]

    def stack_sides(self) -> list[str]:
        return [
            s for s in (SLUICE_FRESH, SLUICE_FORK, PREFECT) if s.split()[0].lower() in self.sides
        ]

    # --- scenarios --------------------------------------------------------------------
    def run(self) -> None:
        if "import" in self.scenarios:
            self.imports()
        if "tasks" in self.scenarios:
            self.tasks()
        if "stack" in self.scenarios:
            for round_ in range(self.plan.stack_rounds):
                for side in rotated(self.stack_sides(), round_):
                    self.attempt(
                        f"stack round {round_ + 1}, {side}",
                        lambda s=side, r=round_: self.stack(s, r),
                    )

    def imports(self) -> None:
        scenario = "Import the SDK (`from … import flow, task`, fresh interpreter)"
        took = self.figures.get(scenario, "import time", "s")
        wall = self.figures.get(scenario, "interpreter start + import, wall", "s")
        peak = self.figures.get(scenario, "peak RSS of the process after the import", "MiB")
        with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
            for round_ in range(self.plan.import_rounds + 1):  # round 0 warms bytecode caches
                for side in rotated(self.sdk_sides(), round_):
                    python, cwd, env = self._sdk(side, Path(tmp))
                    argv = [python, str(PROBE), IMPORTS[side]]

                    def probe(
                        side: str = side,
                        argv: list[str] = argv,
                        cwd: Path = cwd,
                        env: dict[str, str] = env,
                        round_: int = round_,
                    ) -> None:
                        started = time.perf_counter()
                        result = run_json(argv, env, cwd, timeout=120)
                        elapsed = time.perf_counter() - started
                        if round_:
                            took.add(side, result["seconds"])
                            wall.add(side, elapsed)
                            peak.add(side, result["peak_mib"])

                    self.attempt(f"import, {side}", probe)
        self.say("import: done")

    def _sdk(self, side: str, tmp: Path) -> tuple[str, Path, dict[str, str]]:
        if side == PREFECT:
            return str(_prefect_venv.PYTHON), tmp, prefect_env(tmp / "prefect-home")
        return sys.executable, REPO, sluice_env(tmp / "sluice-home")

    def _task_argv(self, side: str) -> tuple[list[str], Path]:
        n = str(self.plan.tasks)
        if side == PREFECT:
            return [str(_prefect_venv.PYTHON), "tasks.py", n, "1"], PREFECT_SIDE
        return [sys.executable, "-m", "bench._sluice_tasks", n, "1"], REPO

    def _tasks_once(self, scenario: str, where: str, side: str, env: dict[str, str]) -> None:
        n = self.plan.tasks
        # at 1,000 tasks a flow's seconds read as milliseconds per task: no second figure
        flow = self.figures.get(scenario, f"flow of {n:,} no-op tasks, {where}", "s")
        argv, cwd = self._task_argv(side)
        flow.add(side.split(" (")[0], *run_json(argv, env, cwd, timeout=900))

    def tasks(self) -> None:
        scenario = TASKS_SCENARIO.format(n=self.plan.tasks)
        with tempfile.TemporaryDirectory(prefix="bench-tasks-") as tmp:
            for round_ in range(self.plan.task_rounds):
                for side in rotated(self.sdk_sides(), round_):
                    _, _, env = self._sdk(side, Path(tmp))
                    self.attempt(
                        f"tasks without a server, {side}",
                        lambda s=side, e=env: self._tasks_once(scenario, "no server", s, e),
                    )
        self.say("tasks: done")

    def stack(self, side: str, round_: int) -> None:
        plan = self.plan
        errors_before = len(self.errors)
        with tempfile.TemporaryDirectory(prefix="bench-stack-") as folder:
            tmp = Path(folder)
            stack: Stack = (
                PrefectStack(tmp) if side == PREFECT else SluiceStack(tmp, fork=side == SLUICE_FORK)
            )
            try:
                self.say(f"stack round {round_ + 1}: {side} starting")
                ready, first = stack.start()
                start = "Stack started from nothing"
                self.figures.get(start, "launch -> deployment served", "s").add(side, ready)
                self.figures.get(start, "launch -> first run Completed", "s").add(side, first)
                time.sleep(SETTLE_S)
                memory = tree_memory(stack.pids())
                idle = "Idle memory of the whole stack (after start and one run)"
                self.figures.get(idle, "RSS summed over the process trees", "MiB").add(
                    side, memory.rss_mib
                )
                self.figures.get(idle, "PSS summed over the process trees", "MiB").add(
                    side, memory.pss_mib
                )
                self.figures.get(idle, "processes", "count", compared=False).add(
                    side, memory.processes
                )
                self.attempt(f"single runs, {side}", lambda: self._singles(stack, side))
                self.attempt(f"cancels, {side}", lambda: self._cancels(stack, side))
                if round_ < plan.batch_rounds:
                    self.attempt(f"batch, {side}", lambda: self._batch(stack, side))
                # last: a burst of task runs leaves Prefect's SQLite busy for seconds
                if "tasks" in self.scenarios:
                    tasks = TASKS_SCENARIO.format(n=plan.tasks)
                    self.attempt(
                        f"tasks with the stack, {side}",
                        lambda: self._tasks_once(
                            tasks, "reporting to the stack", side, stack.task_env()
                        ),
                    )
            finally:
                stack.stop()
                if sys.exc_info()[0] is not None or len(self.errors) > errors_before:
                    self._keep_logs(tmp, f"{side.split()[0].lower()}-round{round_ + 1}")
        self.say(f"stack round {round_ + 1}: {side} done")

    def _keep_logs(self, tmp: Path, name: str) -> None:
        """Copy a failed session's logs out of its temporary folder, and say where."""
        target = LOGS / name
        target.mkdir(parents=True, exist_ok=True)
        for log in tmp.glob("*.log"):
            shutil.copy(log, target / log.name)
        self.errors.append(f"(logs of that session kept in {target})")

    def _singles(self, stack: Stack, side: str) -> None:
        scenario = "Single runs on an idle runner (server timestamps)"
        running = self.figures.get(scenario, "create -> Running", "s")
        completed = self.figures.get(scenario, "create -> Completed", "s")
        for _ in range(self.plan.singles):
            to_running, to_completed = stack.single()
            running.add(side, to_running)
            completed.add(side, to_completed)

    def _cancels(self, stack: Stack, side: str) -> None:
        scenario = "Cancel a sleeping run"
        figure = self.figures.get(scenario, "cancel request -> process gone, run Cancelled", "s")
        for _ in range(self.plan.cancels):
            figure.add(side, stack.cancel_once())

    def _batch(self, stack: Stack, side: str) -> None:
        scenario = f"{self.plan.batch} runs created at once, one runner, limit 8"
        total, rate = stack.batch(self.plan.batch)
        self.figures.get(scenario, "first create -> last end", "s").add(side, total)
        self.figures.get(scenario, "throughput", "runs/s", lower_is_better=False).add(side, rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--sides", default="sluice,prefect", help="comma-separated: sluice, prefect (default both)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated of {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--output", type=Path, help="where to write the report (full run: bench/RESULTS.md)"
    )
    args = parser.parse_args(argv)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in sides if s not in ("sluice", "prefect")] + [
        s for s in scenarios if s not in SCENARIOS
    ]
    if unknown:
        parser.error(f"unknown side or scenario: {', '.join(unknown)}")
    output = args.output or (None if args.quick else RESULTS)
    interrupt_on_signals()
    load = ForeignLoad()
    started = time.perf_counter()
    prefect_version = None
    if "prefect" in sides:
        prefect_version = _prefect_venv.ensure()
    comparison = Comparison(QUICK if args.quick else FULL, sides, scenarios)
    comparison.say(f"comparing {', '.join(sides)} on {', '.join(scenarios)}")
    comparison.run()
    elapsed = time.perf_counter() - started
    command = shlex.join(
        [".venv/bin/python", "-m", "bench.compare", *(argv if argv is not None else sys.argv[1:])]
    )
    text = write_report(
        comparison,
        command=command,
        prefect_version=prefect_version,
        load=load,
        elapsed=elapsed,
        output=output,
    )
    print(text)
    return 1 if comparison.errors else 0


if __name__ == "__main__":
    sys.exit(main())
