"""Tutorial 2: a flow on a schedule (docs/tutorials/schedules.md)."""

from datetime import UTC, datetime

from engine import flow, get_run_logger


@flow
def heartbeat() -> str:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    get_run_logger().info("still here at %s", now)
    return now


if __name__ == "__main__":
    # Every ten seconds, so you see runs come and go; a real job would use
    # cron="0 6 * * *" with timezone="Europe/Paris", or interval=3600.
    heartbeat.serve("every-10s", interval=10)
