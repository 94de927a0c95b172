"""The first flow: greet someone, log it, return the greeting."""

from engine import flow, get_run_logger, task


@task
def compose(name: str) -> str:
    return f"Hello, {name}!"


@flow(name="hello-world")
def hello_world(name: str = "world") -> str:
    greeting = compose(name)
    get_run_logger().info(greeting)
    return greeting


if __name__ == "__main__":
    print(hello_world("Ada"))  # runs right here, no server needed
