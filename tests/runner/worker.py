"""A stand-in flow-run process for runner tests: behaves as its run's parameters say.

Environment: ``WORKER_NO_LIFELINE`` keeps it alive when its runner dies (to
test a runner's clean-up of what a previous instance left). Parameters:
``sleep`` (seconds in Running), ``exit`` (exit code without
reporting a final state), ``kill_self`` (SIGKILL itself), ``final`` (state
type to report, default COMPLETED), ``ignore_term`` (ignore SIGTERM).
It talks to the real stack like the engine does: proposes RUNNING and a final
state with the claim attempt the runner gave it.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from engine.sync import SyncClient
from shared.messages import Decision, ProposedState
from shared.states import StateType


def main() -> int:
    from engine.runner._fence import watch_lease
    from engine.runner._lifeline import die_with_parent

    run_id = os.environ["SLUICE_FLOW_RUN_ID"]
    if not os.environ.get("WORKER_NO_LIFELINE"):
        die_with_parent()  # as python -m engine does
        watch_lease()
    attempt = int(os.environ["SLUICE_FLOW_RUN_ATTEMPT"])
    with SyncClient() as client:
        params = client.read_flow_run(run_id).parameters
        if params.get("ignore_term"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        running = ProposedState(type=StateType.RUNNING, message=f"pid {os.getpid()}")
        reply = client.propose_state(run_id, running, attempt=attempt)
        if reply.status is not Decision.ACCEPT:
            return 0
        time.sleep(float(params.get("sleep", 0)))
        if params.get("kill_self"):
            os.kill(os.getpid(), signal.SIGKILL)
        if "exit" in params:
            return int(params["exit"])
        final = StateType(params.get("final", "COMPLETED"))
        client.propose_state(
            run_id, ProposedState(type=final, data=params.get("result")), attempt=attempt
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
