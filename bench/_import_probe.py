"""Time one import statement in a fresh interpreter; print JSON. Standard library only.

    python bench/_import_probe.py "from engine import flow, task"

Runs under either project's interpreter. Prints the seconds the statement
took (``perf_counter`` around ``exec``) and the process's peak resident
memory before and after it (``ru_maxrss``), so the SDK's share is the difference.
"""

import json
import resource
import sys
import time


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


if __name__ == "__main__":
    before = peak_mib()
    started = time.perf_counter()
    exec(sys.argv[1])
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib(), "base_mib": before}))
