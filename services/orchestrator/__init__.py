"""State orchestration: the only writer of flow-run state (``python -m services.orchestrator``)."""

from .service import Orchestrator

__all__ = ["Orchestrator"]
