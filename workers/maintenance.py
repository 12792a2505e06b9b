"""Plan, merge and sweep tasks (queue ``fetch``: they are quick and must not wait
behind report retries)."""

from __future__ import annotations

import logging

from celery import chord, group

from app import maintenance, runtime
from app.celery import app, settings
from app.errors import KubeError
from app.kube import Pod
from app.queues import Queue
from workers.fetch import fetch
from workers.report import enqueue_reports

log = logging.getLogger(__name__)


def _dispatch(pods: list[Pod]) -> None:
    """One fetch per pod, then merge (the chord callback)."""
    if not pods:
        merge.apply_async()
        return
    chord(group(fetch.s(p.name, p.uid) for p in pods), merge.si()).apply_async()


@app.task(name="workers.maintenance.plan", queue=Queue.FETCH.value, expires=float(settings.fetch_every))
def plan() -> dict:
    try:
        source = runtime.log_source()
    except KubeError as e:
        log.error("plan: %s", e)
        merge.apply_async()
        return {"status": "kube_error"}
    return maintenance.plan(runtime.ledger(), source, settings, _dispatch)


@app.task(name="workers.maintenance.merge", queue=Queue.FETCH.value, acks_late=True)
def merge() -> dict:
    return maintenance.merge(runtime.ledger(), settings, enqueue_reports)


@app.task(name="workers.maintenance.sweep", queue=Queue.FETCH.value, acks_late=True, expires=float(3 * settings.fetch_every))
def sweep() -> dict:
    try:
        source = runtime.log_source()
    except KubeError as e:
        log.warning("sweep: not checking gone pods: %s", e)
        source = None
    return maintenance.sweep(runtime.ledger(), source, settings, enqueue_reports)
