"""The example deployments `sluice dev` serves.

Register them on any stack with `sluice deployment create examples/deployments.py`.
"""

from engine.deployments import DeploymentSpec

hello = DeploymentSpec(
    name="default",
    flow_location="hello_world.py",
    parameters={"name": "world"},
    tags=["example"],
)

etl = DeploymentSpec(name="default", flow_location="etl.py", tags=["example"])

sleepy = DeploymentSpec(name="default", flow_location="sleepy.py", tags=["example"])
