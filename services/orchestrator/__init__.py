"""State orchestration (``python -m services.orchestrator``).

Owns: every write of flow-run state (the only writer of the ``flow_runs``
bucket, by compare-and-set), the orchestration rules (``rules``: pure
functions), creates with idempotency, deployments and their concurrency slots,
run events, and the read model that answers ``flowrun.list``. It never imports
user code, and never starts or kills a process.
"""

from .service import Orchestrator

__all__ = ["Orchestrator"]
