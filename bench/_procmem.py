"""Memory of whole process trees, read from /proc (Linux).

RSS counts a page shared by several processes once per process, so the sum
over a tree overstates what forked children cost; PSS (``smaps_rollup``)
divides every shared page among its sharers and sums to what the tree really
holds. Both are reported: RSS because it is what ``ps`` and ``top`` show, PSS
because it is fair to a fork server.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited while we looked
        # the command name (field 2) is in parentheses and may hold spaces
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def tree(roots: Iterable[int]) -> set[int]:
    """The ``roots`` that are alive and all their descendants."""
    parents = _parents()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in parents]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def _kib(path: Path, *keys: str) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in keys:
                values[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return values


@dataclass(frozen=True)
class TreeMemory:
    processes: int
    rss_mib: float
    pss_mib: float


def tree_memory(roots: Iterable[int]) -> TreeMemory:
    """Summed RSS and PSS of the process trees under ``roots``."""
    pids = tree(roots)
    rss = pss = 0
    for pid in pids:
        rss += _kib(PROC / str(pid) / "status", "VmRSS").get("VmRSS", 0)
        pss += _kib(PROC / str(pid) / "smaps_rollup", "Pss").get("Pss", 0)
    return TreeMemory(processes=len(pids), rss_mib=rss / 1024, pss_mib=pss / 1024)
