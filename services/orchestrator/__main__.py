from services._main import run_service

from .service import Orchestrator

if __name__ == "__main__":
    run_service("orchestrator", Orchestrator)
