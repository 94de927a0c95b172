from services._main import run_service

from .service import CancellationWatcher

if __name__ == "__main__":
    run_service("cancellation-watcher", CancellationWatcher)
