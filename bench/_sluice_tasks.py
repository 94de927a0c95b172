"""``python -m bench._sluice_tasks N REPEATS``: seconds per flow run of N no-op tasks, as JSON.

The Sluice half of the comparison's task scenario; the flow is
:func:`bench.engine_overhead.called` (a task called N times in sequence, local
executor). With ``SLUICE_NATS_URL`` set the flow reports to that stack, as
any flow call does; without it nothing leaves the process. One warm-up call of
10 tasks first, untimed (imports, caches, the connection).
"""

from __future__ import annotations

import json
import sys
import time

from .engine_overhead import called

if __name__ == "__main__":
    n, repeats = int(sys.argv[1]), int(sys.argv[2])
    called(10)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        called(n)
        seconds.append(time.perf_counter() - started)
    print(json.dumps(seconds))
