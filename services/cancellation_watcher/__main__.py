"""``python -m services.cancellation_watcher``: finishes cancellations, detects dead runners."""

from services._main import main, parser

from .service import CancellationWatcher

if __name__ == "__main__":
    main(
        "cancellation-watcher",
        lambda settings, _args: CancellationWatcher(settings),
        parser(
            "services.cancellation_watcher",
            "Have the processes of Cancelling runs stopped by their runners (or mark the "
            "runs Cancelled when no process exists), and mark the running runs of a runner "
            "whose heartbeats stopped as Crashed.",
        ),
    )
