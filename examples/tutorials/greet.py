"""Tutorial 1: a first flow, then a first deployment (docs/tutorials/first-deployment.md)."""

from engine import flow, get_run_logger, task


@task(retries=2, retry_delay_seconds=1)
def shout(name: str) -> str:
    return f"HELLO, {name.upper()}!"


@flow
def greet(name: str = "world") -> str:
    message = shout(name)
    get_run_logger().info(message)
    return message


if __name__ == "__main__":
    # Registers the deployment greet/loud and runs its flow runs from this
    # process until Ctrl-C (which also pauses the deployment's schedules).
    greet.serve("loud")
