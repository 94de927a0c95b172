"""``DockerFlowRunner``: each flow run in a new Docker container (implemented in
:mod:`engine.runner._docker`)."""

from engine.runner._docker import DockerFlowRunner, DockerOptions, default_image

__all__ = ["DockerFlowRunner", "DockerOptions", "default_image"]
