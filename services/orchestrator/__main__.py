"""``python -m services.orchestrator``: the only writer of flow-run state."""

from services._main import main, parser

from .service import Orchestrator

if __name__ == "__main__":
    main(
        "orchestrator",
        lambda settings, _args: Orchestrator(settings),
        parser(
            "services.orchestrator",
            "Serve flowrun.* and deployment.* requests and own the flow_runs bucket: "
            "validate, apply orchestration rules, store each state change and emit its "
            "event. Creates JetStream streams and buckets at start. Run several for "
            "availability; they share the work.",
        ),
    )
