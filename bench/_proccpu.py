"""CPU time of whole process trees, read from /proc (Linux).

A process's own time plus the time of its children that it has already
reaped: a fork server that reaps each finished run carries the CPU of every
run it forked. Sampled before and after a batch, the difference per run is
what each part of the stack costs — the figure that bounds throughput once
the machine's cores are busy.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable

from ._procmem import PROC, tree

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, reaped: bool = True) -> float:
    """Seconds of CPU of ``pid``, with those of its reaped children unless
    ``reaped`` is false (0 if it is gone)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime are fields 14-17 of stat(5); fields[0] is field 3
    return sum(int(x) for x in fields[11 : 15 if reaped else 13]) / _TICKS


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """CPU seconds of the live process trees under ``roots`` (reaped children included)."""
    return sum(cpu_seconds(pid) for pid in tree(roots))


def own_cpu_seconds() -> float:
    """CPU seconds of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
