"""Deployments the tutorials and how-to guides register.

sluice deployment create deployments.py
"""

from pathlib import Path

from greet import greet  # the spec file's folder is importable while it loads

from engine.deployments import DeploymentSpec
from engine.docker_runner import DockerFlowRunner

HERE = Path(__file__).parent

# --8<-- [start:remote]
# Runners on several machines: offered only to runners of the queue "host-b".
remote = greet.to_deployment("remote", queue="host-b", path=HERE)
# --8<-- [end:remote]

# The Docker flow runner: each run in a new container of the image sluice:<version>.
in_docker = DeploymentSpec(
    name="in-docker", flow_location="greet.py", flow_runner=DockerFlowRunner()
)

# Concurrency limits: at most one run of it at a time, across every runner.
one_at_a_time = DeploymentSpec(
    name="one-at-a-time", flow_location="slow_greet.py", concurrency_limit=1
)
