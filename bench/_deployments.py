"""The deployments the comparison's Sluice stack serves (``SLUICE_EXAMPLES`` points here)."""

from engine.deployments import DeploymentSpec

noop = DeploymentSpec(name="bench", flow_location="_noop_flow.py:noop")

sleeper = DeploymentSpec(name="bench", flow_location="_noop_flow.py:sleeper")
