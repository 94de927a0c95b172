"""A stand-in flow-run process for fault tests; it does what its run's parameters say.

``sleep``: seconds in Running. ``ignore_term``: ignore SIGTERM (and so does
its grandchild). ``grandchild``: start a child process that sleeps as long,
in the same process group (as a task's subprocess would be). The Running
state's message is ``pid <pid> grandchild <pid>`` so a test can find both.
It talks to the stack like the engine: RUNNING, then COMPLETED, with the
claim attempt its runner gave it; a refused report ends it quietly.

``journal``: a file the body appends to — ``start``, a ``tick`` every 20 ms,
``end`` — each line ``<run id> <attempt> <what> <wall time>``. It is the
ground truth of when bodies executed (``tests.faults._bodies``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from engine.runner._fence import watch_lease
from engine.runner._lifeline import die_with_parent
from engine.sync import SyncClient
from shared.messages import Decision, ProposedState
from shared.states import StateType

SLEEPER = (
    "import signal, sys, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(float(sys.argv[1]))"
)


def body(journal: str | None, run_id: str, attempt: int, seconds: float) -> None:
    if not journal:
        time.sleep(seconds)
        return
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def note(what: str) -> None:  # one write per line: O_APPEND keeps lines whole
        os.write(fd, f"{run_id} {attempt} {what} {time.time():.6f}\n".encode())

    note("start")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        note("tick")
        time.sleep(0.02)
    note("end")
    os.close(fd)


def main() -> int:
    run_id = os.environ["SLUICE_FLOW_RUN_ID"]
    attempt = int(os.environ["SLUICE_FLOW_RUN_ATTEMPT"])
    die_with_parent()
    watch_lease()  # as python -m engine does: no body outlives its claim
    with SyncClient() as client:
        params = client.read_flow_run(run_id).parameters
        sleep = float(params.get("sleep", 0))
        if params.get("ignore_term"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        message = f"pid {os.getpid()}"
        if params.get("grandchild"):
            child = subprocess.Popen([sys.executable, "-c", SLEEPER, str(sleep + 600)])
            message += f" grandchild {child.pid}"
        reply = client.propose_state(
            run_id, ProposedState(type=StateType.RUNNING, message=message), attempt=attempt
        )
        if reply.status is not Decision.ACCEPT:
            return 0
        body(params.get("journal"), run_id, attempt, sleep)
        client.propose_state(
            run_id,
            ProposedState(type=StateType.COMPLETED, message=f"done by pid {os.getpid()}"),
            attempt=attempt,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
