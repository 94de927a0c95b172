"""A flow that takes its time: try `sluice flow-run cancel` on it."""

import time

from engine import flow, get_run_logger


@flow(name="sleepy")
def sleepy(seconds: float = 60.0) -> str:
    log = get_run_logger()
    for i in range(int(seconds)):
        log.info("still sleeping (%d/%d)", i + 1, int(seconds))
        time.sleep(1)
    return "rested"
