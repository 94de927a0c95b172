"""A stand-in flow-run process for fault tests; it does what its run's parameters say.

``sleep``: seconds in Running. ``ignore_term``: ignore SIGTERM (and so does
its grandchild). ``grandchild``: start a child process that sleeps as long,
in the same process group (as a task's subprocess would be). The Running
state's message is ``pid <pid> grandchild <pid>`` so a test can find both.
It talks to the stack like the engine: RUNNING, then COMPLETED, with the
claim attempt its runner gave it; a refused report ends it quietly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from engine.runner._lifeline import die_with_parent
from engine.sync import SyncClient
from shared.messages import Decision, ProposedState
from shared.states import StateType

SLEEPER = (
    "import signal, sys, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(float(sys.argv[1]))"
)


def main() -> int:
    run_id = os.environ["SLUICE_FLOW_RUN_ID"]
    attempt = int(os.environ["SLUICE_FLOW_RUN_ATTEMPT"])
    die_with_parent()
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
        time.sleep(sleep)
        client.propose_state(
            run_id,
            ProposedState(type=StateType.COMPLETED, message=f"done by pid {os.getpid()}"),
            attempt=attempt,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
