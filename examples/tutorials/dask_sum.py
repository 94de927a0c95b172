"""Tutorial 4: a flow's tasks on a Dask cluster (docs/tutorials/dask.md)."""

from engine import DaskExecutor, flow, get_run_logger, task


@task
def cube(n: int) -> int:
    return n**3


@task
def total(values: list[int]) -> int:
    return sum(values)


# No address: a temporary local cluster of two worker processes, closed when the
# run ends. DaskExecutor("tcp://scheduler:8786") uses a cluster you run.
@flow(executor=DaskExecutor(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1}))
def sum_of_cubes(n: int = 10) -> int:
    cubes = cube.map(range(1, n + 1))
    result = total([c.result() for c in cubes])
    get_run_logger().info("the sum of the first %d cubes is %d", n, result)
    return result


if __name__ == "__main__":
    print(sum_of_cubes(10))
