"""Every NATS subject, stream, consumer, queue group and bucket name Sluice uses.

This module owns names only. No other module spells a subject or bucket as a
string literal: they import it from here, so a rename is one edit and a reader
can see the whole public surface on one screen.
"""

from __future__ import annotations

# --- request/reply subjects (served by the orchestrator's queue group) -------
FLOWRUN_CREATE = "flowrun.create"
FLOWRUN_PROPOSE = "flowrun.state.propose"
FLOWRUN_CANCEL = "flowrun.cancel"
FLOWRUN_READ = "flowrun.read"
FLOWRUN_LIST = "flowrun.list"
FLOWRUN_DELETE = "flowrun.delete"
FLOWRUN_RETRY = "flowrun.retry"
"""Reopen a finished run (a ProposeState with ``retry: true``): the operator's
subject; ``flowrun.state.propose`` refuses retries, so runners cannot reopen runs."""

DEPLOYMENT_REGISTER = "deployment.register"
DEPLOYMENT_READ = "deployment.read"
DEPLOYMENT_LIST = "deployment.list"
DEPLOYMENT_PAUSE = "deployment.pause"
DEPLOYMENT_RESUME = "deployment.resume"
DEPLOYMENT_DELETE = "deployment.delete"
DEPLOYMENT_BACKFILL = "deployment.backfill"
"""Served by the scheduler (it owns schedules): create a deployment's missed runs."""

RUNNER_HEARTBEAT = "runner.heartbeat"
RUNNER_KILL_PREFIX = "runner.kill"
RUNNER_CONSUMER = "runner.consumer"
"""Runners ask the orchestrator for their dispatch consumer: they may pull
from it, never create or change it."""

ORCHESTRATOR_QUEUE = "sluice-orchestrator"
SCHEDULER_QUEUE = "sluice-scheduler"

# --- JetStream streams ------------------------------------------------------
LOGS_STREAM = "FLOWRUN_LOGS"
LOGS_PREFIX = "flowrun.logs"
DISPATCH_STREAM = "FLOWRUN_DISPATCH"
DISPATCH_PREFIX = "flowrun.dispatch"
TASKRUNS_STREAM = "TASKRUN_STATES"
TASKRUNS_PREFIX = "taskrun.states"

# --- KV buckets ---------------------------------------------------------------
FLOW_RUNS_BUCKET = "flow_runs"
DEPLOYMENTS_BUCKET = "deployments"
IDEMPOTENCY_BUCKET = "flow_run_idempotency"
HEARTBEATS_BUCKET = "runner_heartbeats"
"""Runner name -> its last heartbeat; each entry expires unless renewed."""
SLOTS_BUCKET = "concurrency_slots"
"""``<deployment_id>.<n>`` -> the run holding slot n; a lease that expires unless renewed."""
RESULTS_BUCKET = "sluice_results"
#: Object store of deployment bundles: a project folder packed as a tar.gz,
#: named by its digest (``sha256:<hex>``). Clients write, runners read.
BUNDLES_BUCKET = "sluice_bundles"
"""JetStream object store for results too large or not JSON enough for a state."""

DEFAULT_QUEUE = "default"


def logs_subject(run_id: str) -> str:
    return f"{LOGS_PREFIX}.{run_id}"


def runner_kill_subject(runner: str) -> str:
    """Where a runner takes requests to kill a run's process (served by that runner)."""
    return f"{RUNNER_KILL_PREFIX}.{runner}"


def taskruns_subject(flow_run_id: str) -> str:
    """Task-run state records of one flow run (the engine publishes them)."""
    return f"{TASKRUNS_PREFIX}.{flow_run_id}"


def dispatch_subject(queue: str, deployment_id: str) -> str:
    """``flowrun.dispatch.<queue>.<deployment_id>``: a runner of a queue takes
    ``flowrun.dispatch.<queue>.>``; a process serving chosen deployments takes
    ``flowrun.dispatch.*.<deployment_id>`` for each."""
    return f"{DISPATCH_PREFIX}.{queue}.{deployment_id}"


def kv_stream(bucket: str) -> str:
    """The JetStream stream that backs a KV bucket (a NATS convention)."""
    return f"KV_{bucket}"
