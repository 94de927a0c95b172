"""``python -m services.scheduler``: turns schedules into runs and offers due runs."""

from services._main import main, parser

from .service import Scheduler

if __name__ == "__main__":
    main(
        "scheduler",
        lambda settings, _args: Scheduler(settings),
        parser(
            "services.scheduler",
            "Create the runs of deployments' schedules ahead of time, offer due runs to "
            "runners, mark late runs Late, evaluate deployment triggers, and serve "
            "deployment.backfill.",
        ),
    )
