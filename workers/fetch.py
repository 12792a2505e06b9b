"""Fetch tasks: one per Traefik pod per round (queue ``fetch``)."""

from __future__ import annotations

import logging

from celery.exceptions import SoftTimeLimitExceeded

from app import runtime
from app.celery import app, settings
from app.model import FetchStatus
from app.queues import Queue

log = logging.getLogger(__name__)


@app.task(
    name="workers.fetch.fetch",
    queue=Queue.FETCH,
    acks_late=True,
    soft_time_limit=settings.fetch_time_limit,
    time_limit=settings.fetch_time_limit + 10,
    expires=float(settings.fetch_time_limit),
)
def fetch(name: str, uid: str) -> dict:
    """Read pod ``name`` (uid ``uid``) from its cursor and commit. Never raises for a
    handled error, so the round's chord always completes; the cursor stays put."""
    try:
        return runtime.fetcher().fetch(name, uid)
    except SoftTimeLimitExceeded:
        log.warning("fetch %s: over FETCH_TIME_LIMIT (%ss); nothing committed, next round retries", name, settings.fetch_time_limit)
        return {"pod": name, "status": FetchStatus.TIMEOUT}
