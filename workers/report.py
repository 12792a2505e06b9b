"""Report tasks: one per (interval, subdomain) (queue ``report``), and the lease keeper
that renews the leases of the report messages a worker holds (docs/design.md, "Failure
model")."""

from __future__ import annotations

import logging

import redis
from celery import signals
from celery.worker import state as worker_state

from app import runtime
from app.celery import app, settings
from app.ledger import Ledger, valid_subdomain
from app.model import ReportKey, ReportOutcome
from app.queues import Queue
from app.reporting import LeaseKeeper

log = logging.getLogger(__name__)


@app.task(
    bind=True,
    name="workers.report.report",
    queue=Queue.REPORT,
    acks_late=True,
    # Nobody reads a report's result (the ledger holds its outcome): not written.
    ignore_result=True,
    # Set on the task itself: retry_kwargs={"max_retries": None} would still stop at 3.
    max_retries=settings.report_auto_retries,
    # Enforced by the prefork pool only; the threads pool the report workers run is
    # bounded by the POST's own deadline (app/platform.py).
    soft_time_limit=settings.report_time_limit,
    time_limit=settings.report_time_limit + 5,
)
def report(self, start: int, subdomain: str) -> dict:
    """Deliver the report of interval ``start`` (unix seconds) for ``subdomain``; the
    outcome is recorded in the ledger (the returned dict is not kept)."""
    out = runtime.reporter().send(start, subdomain, self.request.retries)
    if out.action == ReportOutcome.RETRY:
        raise self.retry(countdown=out.countdown)
    return {"action": out.action, "detail": out.detail}


# Messages a Redis pipeline carries at once when report tasks are sent (kombu's
# Producer.batch): one round trip per batch, not per message.
ENQUEUE_BATCH = 1000


def enqueue_reports(keys: list[ReportKey]) -> None:
    """Send one report task per claimed key (primitive arguments: start, subdomain).

    Sent through kombu's publish batch (``Producer.batch``: a non-transactional Redis
    pipeline of LPUSHes, flushed every ``ENQUEUE_BATCH`` messages and at the end), so a
    merge that claims 10,000 reports makes about 10 round trips instead of 10,000
    (bench/delivery.py: one by one the merge could not hand out 167 tasks a second on a
    loaded machine, and the report worker waited for work). Transports or settings
    that cannot batch (Redis retry_on_timeout) publish one by one. A failure part-way
    leaves some reports claimed and unsent, as before: the sweep sends them again once
    their lease runs out (docs/design.md, "Failure model")."""
    with app.producer_or_acquire() as producer, producer.batch(ENQUEUE_BATCH):
        for key in keys:
            report.apply_async((key.start, key.name), producer=producer)


# The lease keeper (a worker's main process) ------------------------------------------

_keeper: LeaseKeeper | None = None


def report_key_of(request: object) -> ReportKey | None:
    """The report a received task message is for; None for any other task."""
    if getattr(request, "name", None) != report.name:
        return None
    args = getattr(request, "args", None)
    if not isinstance(args, list | tuple) or len(args) != 2:
        return None
    start, name = args
    if not isinstance(start, int) or not isinstance(name, str):
        return None
    try:
        key = ReportKey.of(start, name)
    except ValueError:
        return None
    return key if valid_subdomain(key.subdomain) else None


def held_reports() -> list[ReportKey]:
    """The reports whose messages this worker holds: reserved (prefetched or running)
    and scheduled (a retry waiting for its countdown). Read from another thread than the
    event loop that changes these sets, so a copy is retried when one changed meanwhile."""
    requests: list[object] = []
    for name in ("reserved_requests", "active_requests", "scheduled_requests"):
        live = getattr(worker_state, name, None)
        if live is None:
            continue
        for _ in range(5):
            try:
                requests.extend(list(live))
                break
            except RuntimeError:  # changed size during iteration
                continue
    return sorted({k for k in map(report_key_of, requests) if k is not None})


def _keeper_ledger() -> Ledger:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    return Ledger(client, settings.redis_key_prefix, settings.report_interval)


@signals.worker_ready.connect
def _start_keeper(sender=None, **_: object) -> None:
    """In the worker's main process, once it consumes (again after a reconnect)."""
    global _keeper
    if _keeper is None:
        _keeper = LeaseKeeper(_keeper_ledger, held_reports, settings.report_hold_lease).start()


@signals.task_received.connect
def _note_received(request=None, **_: object) -> None:
    keeper, key = _keeper, report_key_of(request)
    if keeper is not None and key is not None:
        keeper.note(key)


@signals.worker_shutdown.connect
def _stop_keeper(**_: object) -> None:
    global _keeper
    if _keeper is not None:
        _keeper.stop()
        _keeper = None
