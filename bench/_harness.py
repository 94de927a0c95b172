"""Reusable pieces for benchmarks: processes, a load driver, statistics, reporting.

Owns nothing of Sluice itself. Processes started here (nats-server, a service
under test) are stopped by their owners' ``stop()``, which is idempotent and
safe to call from ``finally`` blocks and exit stacks, so a Ctrl-C or SIGTERM
(see :func:`interrupt_on_signals`) leaves no process and no temp folder behind.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from services.dev import NatsServer
from services.dev._natsserver import server_binary

REPO = Path(__file__).resolve().parent.parent


# --- environment -----------------------------------------------------------------
def backend_options() -> dict[str, Any]:
    """anyio backend options: uvloop when it is installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def uses_uvloop() -> bool:
    return bool(backend_options())


def interrupt_on_signals() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt, so ``finally`` clean-up runs.

    SIGINT too: a shell starts background jobs with SIGINT ignored, and Python
    keeps an ignored SIGINT ignored.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def nats_server_version() -> str:
    try:
        out = subprocess.run(
            [server_binary(), "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return (out.stdout or out.stderr).strip()


def filesystem_of(path: Path) -> str:
    """``device (fstype)`` of the mount holding ``path`` (Linux), else ``unknown``."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    target = str(path.resolve())
    best = ("", "unknown", "unknown")
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        device, mount, fstype = parts[0], parts[1], parts[2]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[0]):
            best = (mount, device, fstype)
    return f"{best[1]} ({best[2]}, mounted at {best[0] or '?'})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_revision() -> str:
    """The repository's commit, marked ``+local changes`` when the code under test differs."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "-uno", "--", "shared", "engine", "services"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' +local changes' if dirty else ''}"


def machine_info(data_dir: Path) -> dict[str, str]:
    return {
        "commit": source_revision(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "host": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": f"{os.cpu_count()} x {cpu_model()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "event loop": "uvloop" if uses_uvloop() else "asyncio",
        "nats-server": nats_server_version(),
        "data folder fs": filesystem_of(data_dir),
    }


class ForeignLoad:
    """CPU that processes other than us and our children used while we ran (Linux).

    Busy CPU time of the whole host (``/proc/stat``) minus our own and our
    reaped children's (``os.times``): a benchmark sharing the host with other
    work reports that it did. Read :meth:`summary` after every child was waited for.
    """

    def __init__(self) -> None:
        self._host0 = self._host_busy()
        self._own0 = self._own()
        self._wall0 = time.monotonic()

    @staticmethod
    def _host_busy() -> float | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def share(self) -> float | None:
        """Other processes' CPU so far, as a share of one CPU (``None`` without /proc)."""
        host = self._host_busy()
        if host is None or self._host0 is None:
            return None
        wall = max(time.monotonic() - self._wall0, 1e-9)
        return max(0.0, (host - self._host0) - (self._own() - self._own0)) / wall

    def summary(self) -> str:
        host = self._host_busy()
        if host is None or self._host0 is None:
            return "unknown (no /proc/stat)"
        wall = time.monotonic() - self._wall0
        foreign = max(0.0, (host - self._host0) - (self._own() - self._own0))
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        return (
            f"{foreign:.1f} CPU-s used by other processes during the {wall:.0f} s run "
            f"({foreign / wall:.0%} of one CPU on average); load average at the end {load}"
        )


# --- processes -------------------------------------------------------------------
@contextmanager
def running_nats_server(store_dir: Path) -> Iterator[NatsServer]:
    """A private nats-server (JetStream, ``sync_interval: always``) for the block."""
    server = NatsServer(store_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class ServiceProcess:
    """``python [-m cProfile -o FILE] -m <module>`` with its log in a file.

    Started in its own session, so a Ctrl-C in the terminal reaches only us and
    our clean-up decides how the child ends (SIGTERM, then SIGKILL).
    """

    def __init__(
        self,
        module: str,
        env: dict[str, str],
        log_path: Path,
        *,
        profile_to: Path | None = None,
    ) -> None:
        self.module = module
        self.env = env
        self.log_path = log_path
        self.profile_to = profile_to
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable]
        if self.profile_to is not None:
            argv += ["-m", "cProfile", "-o", str(self.profile_to)]
        argv += ["-m", self.module]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                env={**os.environ, **self.env},
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.module} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Idempotent."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


# --- measuring -----------------------------------------------------------------------
def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an already sorted sequence."""
    if not ordered:
        return math.nan
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


@dataclass(frozen=True)
class Measurement:
    count: int
    """Timed operations per trial."""
    concurrency: int
    trials: tuple[float, ...]
    """Operations per second of each timed trial, in the order run."""
    latencies: tuple[float, ...]
    """Seconds per operation, all trials pooled, sorted."""

    @property
    def ops_per_s(self) -> float:
        """The median trial's throughput."""
        return statistics.median(self.trials) if self.trials else math.nan

    @property
    def spread(self) -> str:
        """``min..max`` ops/s over the trials (empty for a single trial)."""
        if len(self.trials) < 2:
            return ""
        return f"{min(self.trials):,.0f}..{max(self.trials):,.0f}"

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000

    @property
    def max_ms(self) -> float:
        return (self.latencies[-1] if self.latencies else math.nan) * 1000


Op = Callable[[int], Awaitable[Sequence[float] | None]]
"""One unit of load. Returning ``None`` makes the call one timed operation; returning
latencies makes it that many (a call that times its own steps)."""


async def _run_workers(op: Op, count: int, concurrency: int, start: int) -> list[float]:
    """``count`` calls of ``op(i)`` over ``concurrency`` workers; their latencies."""
    indexes = iter(range(start, start + count))
    latencies: list[float] = []
    clock = time.perf_counter

    async def worker() -> None:
        for i in indexes:  # one shared iterator: workers take the next free index
            t0 = clock()
            steps = await op(i)
            if steps is None:
                latencies.append(clock() - t0)
            else:
                latencies.extend(steps)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return latencies


async def drive(
    op: Op, *, count: int, concurrency: int, warmup: int = 0, repeat: int = 1, start: int = 0
) -> Measurement:
    """Warm up with ``warmup`` untimed calls, then time ``repeat`` trials of ``count`` calls.

    All workers share one event loop. A trial's throughput is its timed
    operations over its wall time; the result reports the median trial and
    pools the latencies of all trials.

    ``op`` receives a distinct index per call, counting up from ``start``
    (warm-up first, then the trials), so it can look up pre-computed inputs
    and never repeats one; ``start + warmup + count * repeat`` is the end.
    """
    if warmup:
        await _run_workers(op, warmup, concurrency, start)
    trials: list[float] = []
    latencies: list[float] = []
    for k in range(repeat):
        t0 = time.perf_counter()
        timed = await _run_workers(op, count, concurrency, start + warmup + k * count)
        elapsed = time.perf_counter() - t0
        trials.append(len(timed) / elapsed if elapsed > 0 else math.nan)
        latencies += timed
    return Measurement(
        count=len(latencies) // max(repeat, 1),
        concurrency=concurrency,
        trials=tuple(trials),
        latencies=tuple(sorted(latencies)),
    )


def merge(measurements: Sequence[Measurement]) -> Measurement:
    """Trials measured separately (e.g. interleaved with others) as one measurement."""
    first = measurements[0]
    return Measurement(
        count=first.count,
        concurrency=first.concurrency,
        trials=tuple(t for m in measurements for t in m.trials),
        latencies=tuple(sorted(x for m in measurements for x in m.latencies)),
    )


# --- reporting -------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    right = [i > 1 for i in range(len(headers))]  # first two columns are labels
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(c).rjust(w) if r else str(c).ljust(w)
            for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right, strict=True)
    )
    return "\n".join([line(headers), rule + "|", *(line(r) for r in rows)])


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"
