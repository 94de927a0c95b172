"""Start runs of a deployment from Python and wait for them
(docs/how-to/runs-from-python.md). Needs SLUICE_NATS_URL to point at a stack."""

import sys

from engine import SyncClient, create_flow_run, wait_for_flow_run


def main(deployment: str) -> None:
    # One call each: they connect, act and disconnect.
    run = create_flow_run(
        deployment, parameters={"name": "Lin"}, idempotency_key="from-python-demo"
    )
    done = wait_for_flow_run(run.id, timeout=300)
    print(done.name, done.state.name, done.state.data)

    # Many calls: keep one connection open.
    with SyncClient() as client:
        page = client.list_flow_runs(deployment=deployment, states=["COMPLETED"], limit=5)
        print(len(page.flow_runs), "completed run(s) of", deployment)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "hello-world/default")
