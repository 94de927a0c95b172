"""prefect_etl.py ported to Sluice (docs/migrating-from-prefect.md).

The changed lines are the imports and the executor: ``task_runner=`` becomes
``executor=``. Everything else is the same code.
"""

from datetime import date

from engine import ThreadPoolExecutor, flow, get_run_logger, task, unmapped


@task(retries=3, retry_delay_seconds=[1, 5, 10])
def fetch_orders(region: str, day: date) -> list[dict]:
    # Stands in for an API call per region.
    return [{"region": region, "day": day.isoformat(), "amount": 10 * (i + 1)} for i in range(3)]


@task
def summarize(batches: list[list[dict]]) -> dict:
    orders = [order for batch in batches for order in batch]
    return {"orders": len(orders), "revenue": sum(o["amount"] for o in orders)}


@flow(name="etl-report", executor=ThreadPoolExecutor(max_workers=4), log_prints=True)
def etl_report(day: date, regions: tuple[str, ...] = ("eu", "us", "apac")) -> dict:
    batches = fetch_orders.map(list(regions), unmapped(day))
    report = summarize([b.result() for b in batches])
    print(f"{day}: {report['orders']} orders, revenue {report['revenue']}")
    get_run_logger().info("report ready")
    return report


if __name__ == "__main__":
    etl_report.serve(name="nightly", cron="0 6 * * *", parameters={"day": "2026-11-20"})
