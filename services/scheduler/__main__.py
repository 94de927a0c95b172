from services._main import run_service

from .service import Scheduler

if __name__ == "__main__":
    run_service("scheduler", Scheduler)
