"""Report tasks: one per (interval, subdomain) (queue ``report``)."""

from __future__ import annotations

from app import runtime
from app.celery import app, settings
from app.model import ReportKey, ReportOutcome
from app.queues import Queue


@app.task(
    bind=True,
    name="workers.report.report",
    queue=Queue.REPORT,
    acks_late=True,
    # Set on the task itself: retry_kwargs={"max_retries": None} would still stop at 3.
    max_retries=settings.report_auto_retries,
    soft_time_limit=settings.report_time_limit,
    time_limit=settings.report_time_limit + 5,
)
def report(self, start: int, subdomain: str) -> dict:
    """Deliver the report of interval ``start`` (unix seconds) for ``subdomain``."""
    out = runtime.reporter().send(start, subdomain, self.request.retries)
    if out.action == ReportOutcome.RETRY:
        raise self.retry(countdown=out.countdown)
    return {"action": out.action, "detail": out.detail}


def enqueue_reports(keys: list[ReportKey]) -> None:
    """Send one report task per claimed key (primitive arguments: start, subdomain)."""
    for key in keys:
        report.apply_async((key.start, key.subdomain))
