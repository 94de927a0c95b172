"""Create a flow run and wait for its end with nothing but nats-py
(docs/how-to/any-nats-client.md)."""

import asyncio
import json
import os
import sys

import nats


async def main(deployment: str) -> None:
    nc = await nats.connect(os.environ.get("SLUICE_NATS_URL", "nats://127.0.0.1:4222"))
    request = {"deployment": deployment, "parameters": {"name": "Grace"}}
    reply = json.loads((await nc.request("flowrun.create", json.dumps(request).encode(), 5)).data)
    if "error" in reply:
        sys.exit(f"refused: {reply['error']['code']}: {reply['error']['message']}")
    print("created", reply["id"], reply["state"]["name"])

    # The run's current state lives in the flow_runs bucket: watch its key.
    kv = await nc.jetstream().key_value("flow_runs")
    watcher = await kv.watch(reply["id"])
    async for entry in watcher:
        if entry is None or entry.value is None:
            continue  # the end of the initial values, or a deleted key
        state = json.loads(entry.value)["state"]
        print(state["name"])
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
    await watcher.stop()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "hello-world/default"))
